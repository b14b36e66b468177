"""The per-variant build steps: make the FP32 / FP16 graph, check a variant against FP32.

INT8 has its own search in ``engines.build.int8.search``."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx

from engines.artifacts.manifest import Accuracy, KeptFloat
from engines.build.accuracy import CANDIDATE_CONF, agreement, detect_all, label_map
from engines.build.fp16 import to_fp16
from engines.build.int8.calibration import ImageSet
from engines.build.int8.graph import HEAD_REASON, decode_head
from engines.model.info import ModelInfo
from engines.model.layouts import OutputLayout
from engines.model.postprocess import Detections
from engines.precision import Precision
from engines.runtime.base import Engine

log = logging.getLogger(__name__)
EngineLoader = Callable[[Path, Precision], Engine]


@dataclass(frozen=True)
class Reference:
    """FP32's detections on the validation set: the ground truth of every agreement check."""

    images: ImageSet
    detections: list[Detections]
    info: ModelInfo
    layout: OutputLayout
    pad_value: int
    labels: Path | None = None  # COCO json with real boxes for the validation files


@dataclass
class Candidate:
    """A variant under construction."""

    onnx_path: Path
    accuracy: Accuracy | None = None
    kept_float: list[KeptFloat] | None = None


def measure(
    engine: Engine, ref: Reference, budget: float, tick: Callable[[int], None] | None = None
) -> Accuracy:
    """The variant's agreement with FP32 (and mAP against real labels when the build has them)."""
    found = detect_all(
        engine, ref.images, ref.layout, ref.info.input_size, ref.pad_value, CANDIDATE_CONF, tick
    )
    score = agreement(ref.detections, found, ref.info.num_classes)
    labelled = None
    if ref.labels is not None:
        labelled = label_map(ref.labels, ref.images.names, ref.info.class_names, found)
    return Accuracy(
        map50_95_agreement=score.map50_95,
        map50_agreement=score.map50,
        budget=budget,
        reference_boxes=score.reference_boxes,
        validation_images=len(ref.images),
        validation_hash=ref.images.content_hash,
        labelled_map50_95=labelled,
    )


def make_fp32(source: Path, out_dir: Path) -> Candidate:
    target = out_dir / "fp32.onnx"
    shutil.copyfile(source, target)
    return Candidate(target)


def make_fp16(source: Path, out_dir: Path) -> Candidate:
    model = onnx.load(str(source))
    head = decode_head(model)
    target = out_dir / "fp16.onnx"
    onnx.save(to_fp16(model, keep_float=head), str(target))
    return Candidate(target, kept_float=[KeptFloat(node=n, reason=HEAD_REASON) for n in head])
