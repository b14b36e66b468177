"""An independent NumPy reading of raw YOLO outputs, to check the server's detections against.

Written from the output formats themselves (and Ultralytics' documented predictor behaviour),
without importing ``engines.model.layouts`` or ``engines.model.postprocess``: a loop-based greedy
NMS, strict ``> conf`` like Ultralytics, Ultralytics' own box mapping (per-axis gain, padding
rounded with its ``- 0.1``). Slow and plain on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Found:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in original pixels
    score: float
    class_id: int


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _greedy_nms(rows: np.ndarray, iou: float, max_det: int) -> np.ndarray:
    """rows (N, 6) x1 y1 x2 y2 score class -> kept rows, best first; classes never interact."""
    order = sorted(range(len(rows)), key=lambda i: (-rows[i, 4], i))
    kept: list[int] = []
    for i in order:
        if len(kept) == max_det:
            break
        if all(rows[k, 5] != rows[i, 5] or _iou(rows[k], rows[i]) <= iou for k in kept):
            kept.append(i)
    return rows[kept]


def _candidates(output: np.ndarray, conf: float) -> np.ndarray:
    """(4+nc, N) channels-first head output -> (M, 6) rows above ``conf``."""
    table = output.astype(np.float64).T  # (N, 4+nc)
    scores = table[:, 4:]
    cls = scores.argmax(axis=1)
    best = scores.max(axis=1)
    keep = best > conf
    cx, cy, w, h = (table[keep, k] for k in range(4))
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, best[keep], cls[keep]], 1)


def _to_original(
    rows: np.ndarray, input_hw: tuple[int, int], image_hw: tuple[int, int]
) -> np.ndarray:
    (H, W), (h0, w0) = input_hw, image_hw
    gain = min(H / h0, W / w0)
    new_h, new_w = max(round(h0 * gain), 1), max(round(w0 * gain), 1)
    pad_x, pad_y = round((W - new_w) / 2 - 0.1), round((H - new_h) / 2 - 0.1)
    out = rows.copy()
    out[:, [0, 2]] = ((out[:, [0, 2]] - pad_x) / (new_w / w0)).clip(0, w0)
    out[:, [1, 3]] = ((out[:, [1, 3]] - pad_y) / (new_h / h0)).clip(0, h0)
    return out


def reference_detections(
    output: np.ndarray,
    input_hw: tuple[int, int],
    image_hw: tuple[int, int],
    *,
    conf: float,
    iou: float,
    max_det: int,
) -> list[Found]:
    """One image's raw output (no batch dim) -> detections in original pixels, best first.

    ``(K, 6)`` outputs (NMS in the model: x1 y1 x2 y2 score class) are final: only the
    confidence filter and ``max_det`` apply. ``(4+nc, N)`` outputs get class-aware NMS.
    """
    if output.ndim == 2 and output.shape[1] == 6:
        rows = output.astype(np.float64)
        rows = rows[rows[:, 4] > conf][:max_det]
    else:
        rows = _greedy_nms(_candidates(output, conf), iou, max_det)
    mapped = _to_original(rows, input_hw, image_hw)
    visible = (mapped[:, 2] > mapped[:, 0]) & (mapped[:, 3] > mapped[:, 1])
    return [
        Found((r[0], r[1], r[2], r[3]), float(r[4]), int(r[5]))
        for r in sorted(mapped[visible], key=lambda r: -r[4])
    ]
