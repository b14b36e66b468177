"""How fast each served variant is on this host, now.

The manifest's timings were taken when the variant was built, perhaps on another machine or
while it was busy: they are only the first guess. At warm-up the server times each engine on
this host (``measure_engine``), and every real batch keeps the figure current (``LiveSpeed``,
fed by the scheduler's observer). ``auto`` ranks variants by these figures and ``GET /models``
shows them.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from engines.artifacts.record import VariantRecord
from engines.runtime.base import Engine

# Weight of the newest batch in the running average: about the last ten batches count.
ALPHA = 0.2
WARMUP_SOURCE = "warm-up on this host: back-to-back engine.infer, one caller"
SERVING_SOURCE = "batches served on this host (running average)"


@dataclass(frozen=True)
class BatchFigure:
    ms: float  # engine time of one batch of this size
    samples: int  # batches behind the figure (0: a first guess not measured here)
    source: str  # what the figure was measured under


class LiveSpeed:
    """Engine time per batch size of one variant: a first guess, then measured here."""

    def __init__(self, first_guess: Mapping[int, float] | None = None, source: str = "") -> None:
        self._figures = {
            size: BatchFigure(ms, 0, source) for size, ms in (first_guess or {}).items() if ms > 0
        }
        self._lock = threading.Lock()

    def replace(self, measured_ms: Mapping[int, float], source: str = WARMUP_SOURCE) -> None:
        """Take figures measured on this host (warm-up) over the first guess."""
        with self._lock:
            for size, ms in measured_ms.items():
                self._figures[size] = BatchFigure(ms, 1, source)

    def observe(self, size: int, duration_s: float) -> None:
        """One real batch of ``size`` took ``duration_s`` (engine time only)."""
        ms = duration_s * 1000
        with self._lock:
            old = self._figures.get(size)
            if old is None or old.samples == 0:
                self._figures[size] = BatchFigure(ms, 1, SERVING_SOURCE)
            else:
                self._figures[size] = BatchFigure(
                    old.ms + ALPHA * (ms - old.ms), old.samples + 1, SERVING_SOURCE
                )

    def figures(self) -> dict[int, BatchFigure]:
        with self._lock:
            return dict(sorted(self._figures.items()))

    def per_image_s(self, batch: int) -> float | None:
        """Seconds per image in a batch of ``batch`` (or the nearest size measured)."""
        figures = self.figures()
        if not figures:
            return None
        size = min(figures, key=lambda s: (abs(s - batch), -s))
        return figures[size].ms / 1000 / size


def first_guess(record: VariantRecord) -> LiveSpeed:
    """The build's timings, labelled with the load they were measured under."""
    under = record.timings.measured_under if record.timings else "not timed"
    return LiveSpeed(record.latency_ms, f"build manifest ({under})")


def measure_engine(
    engine: Engine,
    sizes: Iterable[int],
    runs: int,
    input_size: tuple[int, int] | None = None,
) -> dict[int, float]:
    """Median ms of ``runs`` back-to-back batches of each size (after the engine's warm-up)."""
    dims = list(engine.inputs[0].shape[1:])
    if input_size is not None and len(dims) == 3:  # symbolic height/width: the model's size
        dims[1] = dims[1] or input_size[0]
        dims[2] = dims[2] or input_size[1]
    shape = tuple(d if d is not None else 1 for d in dims)
    dtype = np.float16 if engine.inputs[0].dtype == "float16" else np.float32
    result: dict[int, float] = {}
    for size in sorted(set(sizes)):
        batch = np.full((size, *shape), 0.5, dtype=dtype)  # mid-grey: no all-zero shortcuts
        times = []
        for _ in range(max(1, runs)):
            start = time.perf_counter()
            engine.infer(batch)
            times.append((time.perf_counter() - start) * 1000)
        result[size] = round(statistics.median(times), 2)
    return result
