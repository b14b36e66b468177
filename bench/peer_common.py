"""What every server in the peer benchmark shares: detection options and the reply's shape."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engines.model.pipeline import DetectOptions
from engines.model.postprocess import Detections

# detect-serve's defaults for /detect (conf 0.25, iou 0.45, max_det 300).
OPTIONS = DetectOptions(conf=0.25, iou=0.45, max_det=300)


def as_json_detections(found: Detections, names: Sequence[str]) -> list[dict[str, Any]]:
    """The ``detections`` list of detect-serve's reply, so one client reads every server."""
    return [
        {
            "label": names[int(c)],
            "class_id": int(c),
            "score": round(float(s), 4),
            "box": [round(float(v), 1) for v in b],
        }
        for b, s, c in zip(found.boxes, found.scores, found.class_ids, strict=True)
    ]
