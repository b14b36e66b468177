"""The INT8 maker: a Q/DQ graph calibrated on real images, with an automatic mixed-precision
search that finds which nodes stay in float, and says why.

1. Structural rule: the decode head (every node after each head's last convolution, found by
   graph analysis in ``engines.build.int8.graph``) stays float; it mixes pixel-scale boxes
   with 0..1 scores.
2. Measured rule: if the variant still misses its budget, rank every convolution by how far it
   moves the detections when it alone is quantized (ranges computed once, cached, so each probe
   is a sub-second re-quantization plus a few images), then fall back the worst ones to float,
   one at a time, re-checking the agreement, until the budget is met or ``max_fallbacks`` are
   spent (the builder then rejects the variant).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from engines.artifacts.record import Accuracy, KeptFloat, VariantRecord
from engines.build.accuracy import detection_error
from engines.build.int8.calibration import CalibrationSet
from engines.build.int8.graph import HEAD_REASON, compute_nodes, decode_head
from engines.build.int8.quantize import Int8Options
from engines.build.validation import EngineLoader, Reference, detect_all, measure
from engines.model.postprocess import Detections
from engines.precision import Precision
from engines.runtime.base import Int8Quantizer, quantize_for_onnxruntime_cpu

Say = Callable[[str], None]


@dataclass(frozen=True)
class Int8Search:
    calibration: CalibrationSet
    options: Int8Options
    budget: float
    mixed_precision: bool  # False: whole-graph INT8, no float-kept nodes (to show why not)
    max_fallbacks: int
    probe_images: int = 8
    quantize: Int8Quantizer = quantize_for_onnxruntime_cpu  # the backend row's INT8 recipe


@dataclass(frozen=True)
class Sensitivity:
    node: str
    error: float  # detection_error of the graph with only this node quantized


def structural_float_set(model: onnx.ModelProto) -> list[KeptFloat]:
    return [KeptFloat(node=n, reason=HEAD_REASON) for n in decode_head(model)]


class _Quantizer:
    """Re-quantizes ``source`` with a given float-kept set and loads the result."""

    def __init__(self, source: Path, search: Int8Search, load: EngineLoader) -> None:
        self.source, self.search, self.load = source, search, load

    def write(self, target: Path, kept: Sequence[str], only: Sequence[str] | None = None) -> None:
        calibration, options = self.search.calibration, self.search.options
        self.search.quantize(self.source, target, calibration, options, keep_float=kept, only=only)

    def accuracy(self, target: Path, kept: Sequence[str], ref: Reference) -> Accuracy:
        self.write(target, kept)
        engine = self.load(target, Precision.INT8)
        try:
            return measure(engine, ref, self.search.budget)
        finally:
            engine.close()


def rank_sensitivity(
    quantizer: _Quantizer, ref: Reference, kept: Sequence[str], nodes: Sequence[str], probe: Path
) -> list[Sensitivity]:
    """Every node in ``nodes``, most damaging first, by the detection error when it alone is INT8.

    Probes run on a few calibration images, never the validation ones: the acceptance check must
    not be tuned on the images it is judged on.
    """
    images = quantizer.search.calibration.images.spread(quantizer.search.probe_images)

    def detect(path: Path, precision: Precision) -> list[Detections]:
        engine = quantizer.load(path, precision)
        try:
            return detect_all(engine, ref.pipeline, images)
        finally:
            engine.close()

    baseline = detect(quantizer.source, Precision.FP32)
    ranked = []
    for node in nodes:
        quantizer.write(probe, kept, only=[node])
        ranked.append(Sensitivity(node, detection_error(baseline, detect(probe, Precision.INT8))))
    probe.unlink(missing_ok=True)
    return sorted(ranked, key=lambda s: s.error, reverse=True)


def _fallback_reason(s: Sensitivity, rank: int, total: int, budget: float) -> str:
    return (
        f"sensitivity: quantized alone it moves detections by {s.error:.4f} "
        f"(rank {rank} of {total} convolutions); kept float to reach budget {budget}"
    )


def make_int8(
    source: Path,
    out_dir: Path,
    ref: Reference,
    search: Int8Search,
    load: EngineLoader,
    say: Say,
    draft: VariantRecord,
) -> VariantRecord:
    """The INT8 variant with the smallest float-kept set this search finds within budget (or,
    failing that, the last one tried: the builder's budget check then rejects it)."""
    model = onnx.load(str(source), load_external_data=False)
    kept = structural_float_set(model) if search.mixed_precision else []
    quantizer = _Quantizer(source, search, load)
    target = out_dir / "int8.onnx"
    accuracy = quantizer.accuracy(target, [k.node for k in kept], ref)
    say(f"int8: {len(kept)} nodes kept float, agreement {accuracy.map50_95_agreement:.4f}")
    # No fallbacks allowed: probing sensitivities would only cost time.
    if (
        accuracy.map50_95_agreement >= search.budget
        or not search.mixed_precision
        or search.max_fallbacks < 1
    ):
        return _made(draft, target, accuracy, kept)
    convs = compute_nodes(model)
    say(f"int8: below budget {search.budget}; probing {len(convs)} convolutions one at a time")
    ranked = rank_sensitivity(
        quantizer, ref, [k.node for k in kept], convs, out_dir / "int8-probe.onnx"
    )
    say("int8 sensitivity: " + ", ".join(f"{s.node} {s.error:.3f}" for s in ranked[:6]))
    for rank, sensitivity in enumerate(ranked[: search.max_fallbacks], start=1):
        reason = _fallback_reason(sensitivity, rank, len(ranked), search.budget)
        kept.append(KeptFloat(node=sensitivity.node, reason=reason))
        accuracy = quantizer.accuracy(target, [k.node for k in kept], ref)
        say(f"int8: + {sensitivity.node} float, agreement {accuracy.map50_95_agreement:.4f}")
        if accuracy.map50_95_agreement >= search.budget:
            break
    return _made(draft, target, accuracy, kept)


def _made(
    draft: VariantRecord, target: Path, accuracy: Accuracy, kept: list[KeptFloat]
) -> VariantRecord:
    update = {"artifact": target.name, "accuracy": accuracy, "kept_float": tuple(kept)}
    return draft.model_copy(update=update)
