"""Rolling agreement with FP32 over the last shadow samples of one (model, precision).

The measure is the builder's own (``engines.build.accuracy.agreement``: COCO mAP50-95 of the
variant's detections with FP32's as ground truth), pooled over the window, so the live figure and
the build-time figure in the manifest mean the same thing and compare against the same budget.

A COCO evaluation of a 200-image window takes about a second of CPU here (every candidate down to
conf 0.001 is scored), so a full window is re-scored every tenth of its length in new samples, not
on every sample; the figure lags by at most that many samples.
"""

from __future__ import annotations

import threading
from collections import deque

from engines.build.accuracy import agreement
from engines.model.postprocess import Detections


class RollingAgreement:
    """The last ``window`` (FP32, variant) detection pairs and their pooled agreement."""

    def __init__(self, window: int, min_samples: int, num_classes: int) -> None:
        if not 1 <= min_samples <= window:
            raise ValueError(f"need 1 <= min_samples ({min_samples}) <= window ({window})")
        self._pairs: deque[tuple[Detections, Detections]] = deque(maxlen=window)
        self._min = min_samples
        self._classes = num_classes
        self._lock = threading.Lock()
        self.value: float | None = None  # None until min_samples with FP32 boxes were seen
        self._since_scored = 0

    @property
    def samples(self) -> int:
        return len(self._pairs)

    def add(self, reference: Detections, candidate: Detections) -> float | None:
        """Add one sample; the window's agreement (None while it is too small to say)."""
        with self._lock:
            self._pairs.append((reference, candidate))
            self._since_scored += 1
            if len(self._pairs) < self._min:
                return self.value
            if self.value is not None and self._since_scored < max(1, len(self._pairs) // 10):
                return self.value
            self._since_scored = 0
            refs = [r for r, _ in self._pairs]
            cands = [c for _, c in self._pairs]
            score = agreement(refs, cands, self._classes)
            # A window where FP32 found nothing confident says nothing about agreement.
            if score.reference_boxes:
                self.value = score.map50_95
            return self.value


def image_agreement(reference: Detections, candidate: Detections, num_classes: int) -> float | None:
    """The builder's measure on one image; None when FP32 found nothing confident in it."""
    score = agreement([reference], [candidate], num_classes)
    return score.map50_95 if score.reference_boxes else None
