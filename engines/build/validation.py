"""Checking a variant against FP32: the reference detections, and a variant's measured accuracy.

Every graph is run through the model's one pipeline (``engines.model.pipeline``), so the build
judges variants exactly as the server will run them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engines.artifacts.record import Accuracy, VariantRecord
from engines.build.accuracy import CANDIDATE_OPTIONS, agreement, label_map
from engines.build.int8.calibration import ImageSet
from engines.model.pipeline import ModelPipeline
from engines.model.postprocess import Detections
from engines.precision import Precision
from engines.runtime.base import Engine

Tick = Callable[[int], None]
# Opens a variant graph for checking (the build runs every ONNX graph on the ONNX backend).
EngineLoader = Callable[[Path, Precision], Engine]


@dataclass(frozen=True)
class Reference:
    """FP32's detections on the validation set: the ground truth of every agreement check."""

    images: ImageSet
    detections: list[Detections]
    pipeline: ModelPipeline
    labels: Path | None = None  # COCO json with real boxes for the validation files


def detect_all(
    engine: Engine, pipeline: ModelPipeline, images: ImageSet, tick: Tick | None = None
) -> list[Detections]:
    """Every image of the set through the pipeline, scored the way agreement needs."""
    return pipeline.detect_arrays(engine, images.images, CANDIDATE_OPTIONS, tick)


def make_reference(
    source: Path,
    pipeline: ModelPipeline,
    images: ImageSet,
    load: EngineLoader,
    labels: Path | None = None,
    tick: Tick | None = None,
) -> Reference:
    engine = load(source, Precision.FP32)
    try:
        detections = detect_all(engine, pipeline, images, tick)
    finally:
        engine.close()
    return Reference(images, detections, pipeline, labels)


def measure(engine: Engine, ref: Reference, budget: float, tick: Tick | None = None) -> Accuracy:
    """The variant's agreement with FP32 (and mAP against real labels when the build has them)."""
    found = detect_all(engine, ref.pipeline, ref.images, tick)
    info = ref.pipeline.info
    score = agreement(ref.detections, found, info.num_classes)
    labelled = None
    if ref.labels is not None:
        labelled = label_map(ref.labels, ref.images.names, info.class_names, found)
    return Accuracy(
        map50_95_agreement=score.map50_95,
        map50_agreement=score.map50,
        budget=budget,
        reference_boxes=score.reference_boxes,
        validation_images=len(ref.images),
        validation_hash=ref.images.content_hash,
        labelled_map50_95=labelled,
    )


def judge(record: VariantRecord, accuracy: Accuracy) -> VariantRecord:
    """``record`` with ``accuracy``, accepted when it meets the budget it was measured against."""
    record = record.model_copy(update={"accuracy": accuracy})
    score, budget = accuracy.map50_95_agreement, accuracy.budget
    if score >= budget:
        return record.accept()
    return record.reject(f"mAP50-95 agreement {score:.4f} < budget {budget}")
