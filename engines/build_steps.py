"""The per-variant build steps: make the graph, load it, check it against FP32, time it."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx

from engines.calibration import CalibrationFeeds, ImageSet
from engines.formats import OutputLayout
from engines.graph import HEAD_REASON, compute_nodes, decode_head
from engines.manifest import Accuracy, KeptFloat
from engines.model_info import ModelInfo
from engines.postprocess import Detections
from engines.precision import Precision, to_fp16
from engines.quantize import Int8Options, quantize_int8
from engines.runtime.base import Engine
from engines.validate import CANDIDATE_CONF, agreement, detect_all, label_map

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


def measure(engine: Engine, ref: Reference, budget: float) -> Accuracy:
    found = detect_all(
        engine, ref.images, ref.layout, ref.info.input_size, ref.pad_value, CANDIDATE_CONF
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


@dataclass(frozen=True)
class Int8Search:
    calibration: ImageSet
    options: Int8Options
    budget: float
    mixed_precision: bool
    max_fallbacks: int


def make_int8(
    source: Path,
    out_dir: Path,
    ref: Reference,
    search: Int8Search,
    load: EngineLoader,
    say: Callable[[str], None],
) -> Candidate:
    """Quantize with the decode head in float; if short of budget, measure each convolution's
    sensitivity (agreement gained by keeping it alone in float) and fall back the most sensitive
    ones, one at a time, until the budget is met or ``max_fallbacks`` are spent."""
    model = onnx.load(str(source), load_external_data=False)
    head = decode_head(model) if search.mixed_precision else []
    kept = [KeptFloat(node=n, reason=HEAD_REASON) for n in head]
    method, digest = search.options.method, search.calibration.content_hash[:12]
    ranges = out_dir / f"calibration-{method}-{digest}.json"
    feeds = CalibrationFeeds(
        search.calibration, ref.info.input_name, ref.info.input_size, ref.pad_value
    )
    target = out_dir / "int8.onnx"

    def trial(nodes: list[str], path: Path) -> Accuracy:
        quantize_int8(
            source,
            path,
            feeds if not ranges.exists() else None,
            search.options,
            keep_float=nodes,
            ranges_cache=ranges,
        )
        engine = load(path, Precision.INT8)
        try:
            return measure(engine, ref, search.budget)
        finally:
            engine.close()

    accuracy = trial([k.node for k in kept], target)
    say(f"int8: {len(kept)} nodes kept float, agreement {accuracy.map50_95_agreement:.4f}")
    if accuracy.map50_95_agreement < search.budget and search.mixed_precision:
        gains = _sensitivity(model, kept, accuracy.map50_95_agreement, trial, out_dir, say)
        for node, gain in gains[: search.max_fallbacks]:
            kept.append(
                KeptFloat(
                    node=node,
                    reason=(
                        f"sensitivity: keeping it alone in float raises agreement by {gain:+.4f}; "
                        f"budget {search.budget}"
                    ),
                )
            )
            accuracy = trial([k.node for k in kept], target)
            say(f"int8: {len(kept)} nodes kept float, agreement {accuracy.map50_95_agreement:.4f}")
            if accuracy.map50_95_agreement >= search.budget:
                break
    return Candidate(target, accuracy=accuracy, kept_float=kept)


def _sensitivity(
    model: onnx.ModelProto,
    kept: list[KeptFloat],
    base: float,
    trial: Callable[[list[str], Path], Accuracy],
    out_dir: Path,
    say: Callable[[str], None],
) -> list[tuple[str, float]]:
    """(conv, agreement gained by keeping only it in float as well), most sensitive first."""
    probe = out_dir / "int8-probe.onnx"
    names = [k.node for k in kept]
    gains = []
    for conv in compute_nodes(model):
        gains.append((conv, trial([*names, conv], probe).map50_95_agreement - base))
    probe.unlink(missing_ok=True)
    gains.sort(key=lambda g: g[1], reverse=True)
    say("int8 sensitivity: " + ", ".join(f"{n} {g:+.3f}" for n, g in gains[:6]))
    return gains
