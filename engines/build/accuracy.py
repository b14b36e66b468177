"""How close a variant is to FP32: COCO mAP of its detections with FP32's as ground truth.

Agreement is measured on validation images disjoint from calibration. FP32 detections above
``REFERENCE_CONF`` are the ground truth; the variant's detections down to ``CANDIDATE_CONF`` are
scored, as a COCO evaluation would. 1.0 means the variant finds the same boxes with the same
ranking. With real labels (a COCO json), the same evaluator gives mAP against them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.model.pipeline import DetectOptions
from engines.model.postprocess import Detections, pairwise_iou

REFERENCE_CONF = 0.25
CANDIDATE_CONF = 0.001
IOU = 0.45
MAX_DET = 300
# How every variant (FP32 included) is run for scoring: down to CANDIDATE_CONF, as COCO does.
CANDIDATE_OPTIONS = DetectOptions(conf=CANDIDATE_CONF, iou=IOU, max_det=MAX_DET)


@dataclass(frozen=True)
class Agreement:
    map50_95: float
    map50: float
    reference_boxes: int


def _xywh(box: np.ndarray) -> list[float]:
    return [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]


def _coco_map(gt: dict[str, Any], predictions: list[dict[str, Any]]) -> tuple[float, float]:
    from faster_coco_eval import COCO, COCOeval_faster

    if not gt["annotations"]:
        return (1.0, 1.0) if not predictions else (0.0, 0.0)
    truth = COCO(gt)
    found = truth.loadRes(predictions) if predictions else None
    if found is None:
        return 0.0, 0.0
    evaluation = COCOeval_faster(truth, found, "bbox", print_function=lambda *_: None)
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    stats = [max(0.0, float(s)) for s in evaluation.stats[:2]]
    return stats[0], stats[1]


def _predictions(detections: Sequence[Detections]) -> list[dict[str, Any]]:
    return [
        {"image_id": i + 1, "category_id": int(c) + 1, "bbox": _xywh(b), "score": float(s)}
        for i, d in enumerate(detections)
        for b, s, c in zip(d.boxes, d.scores, d.class_ids, strict=True)
    ]


def agreement(
    reference: Sequence[Detections], candidate: Sequence[Detections], num_classes: int
) -> Agreement:
    """mAP50-95 / mAP50 of ``candidate`` against ``reference`` detections as ground truth."""
    annotations: list[dict[str, Any]] = []
    for i, d in enumerate(reference):
        for b, s, c in zip(d.boxes, d.scores, d.class_ids, strict=True):
            if s >= REFERENCE_CONF:
                xywh = _xywh(b)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": int(c) + 1,
                        "bbox": xywh,
                        "area": xywh[2] * xywh[3],
                        "iscrowd": 0,
                    }
                )
    gt = {
        "images": [{"id": i + 1, "width": 1, "height": 1} for i in range(len(reference))],
        "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)],
        "annotations": annotations,
    }
    m, m50 = _coco_map(gt, _predictions(candidate))
    return Agreement(round(m, 4), round(m50, 4), len(annotations))


def label_map(
    labels: Path,
    files: Sequence[str],
    class_names: Sequence[str],
    detections: Sequence[Detections],
) -> float:
    """mAP50-95 against a labelled COCO json; images are matched by file name, classes by name."""
    gt = json.loads(labels.read_text())
    by_name = {c["name"]: c["id"] for c in gt["categories"]}
    image_ids = {Path(im["file_name"]).name: im["id"] for im in gt["images"]}
    missing = [f for f in files if f not in image_ids]
    if missing:
        raise ValueError(f"{labels} has no annotations for {', '.join(missing[:5])}")
    predictions = []
    for file, d in zip(files, detections, strict=True):
        for b, s, c in zip(d.boxes, d.scores, d.class_ids, strict=True):
            name = class_names[int(c)]
            if name in by_name:
                predictions.append(
                    {
                        "image_id": image_ids[file],
                        "category_id": by_name[name],
                        "bbox": _xywh(b),
                        "score": float(s),
                    }
                )
    gt["images"] = [im for im in gt["images"] if Path(im["file_name"]).name in set(files)]
    return round(_coco_map(gt, predictions)[0], 4)


def detection_error(reference: Sequence[Detections], candidate: Sequence[Detections]) -> float:
    """Mean over FP32's confident boxes of (1 - IoU of the best same-class candidate box) plus
    the score change: 0 for identical detections, about 1 or more for lost ones.

    A continuous stand-in for agreement mAP: on the few images a sensitivity probe can afford,
    mAP moves in coarse steps, while this still ranks small box shifts.
    """
    errors: list[float] = []
    for ref, cand in zip(reference, candidate, strict=True):
        for box, score, cls in zip(ref.boxes, ref.scores, ref.class_ids, strict=True):
            if score < REFERENCE_CONF:
                continue
            same = cand.class_ids == cls
            if not same.any():
                errors.append(1.0 + float(score))
                continue
            ious = pairwise_iou(box[None], cand.boxes[same])[0]
            best = int(ious.argmax())
            errors.append(1.0 - float(ious[best]) + abs(float(cand.scores[same][best] - score)))
    return float(np.mean(errors)) if errors else 0.0
