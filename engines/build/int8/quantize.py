"""INT8 variants as Q/DQ graphs, calibrated on real images (ONNX Runtime's static quantizer).

Q/DQ is what both ONNX Runtime's CPU provider and strongly typed TensorRT networks consume: the
precision lives in the graph, so the same ONNX is the artifact on every backend. Calibration
ranges are cached at the calibration set's explicit cache path, so re-quantizing with another
float-kept set (the mixed-precision search) costs under a second, not another calibration pass.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnx
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from engines.build.int8.calibration import CalibrationSet

log = logging.getLogger(__name__)

CalibrationName = Literal["minmax", "entropy", "percentile"]
METHODS: dict[str, CalibrationMethod] = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


@dataclass(frozen=True)
class Int8Options:
    method: CalibrationName = "minmax"
    per_channel: bool = True
    # TensorRT only takes symmetric (zero-point 0) activations; ONNX Runtime takes both, and on
    # AVX2 CPUs symmetric int8 activations are shifted to uint8 and saturate its u8s8 kernels.
    symmetric_activations: bool = False
    # Q/DQ at convolution inputs only: the placement TensorRT's own quantization toolkit uses,
    # and measurably closer to FP32 here than also quantizing pools and activations.
    # None = every op the quantizer supports (the whole graph, decode head included).
    op_types: tuple[str, ...] | None = ("Conv",)

    @property
    def ranges_key(self) -> str:
        """What the cached calibration ranges depend on: the method and which ops collect them."""
        ops = "-".join(self.op_types) if self.op_types else "all"
        return f"{self.method}-{ops}"

    def describe(self) -> str:
        activations = "symmetric" if self.symmetric_activations else "asymmetric"
        weights = "per-channel" if self.per_channel else "per-tensor"
        ops = ", ".join(self.op_types) if self.op_types else "every supported op"
        return f"{self.method}; {weights} weights; {activations} activations; Q/DQ at {ops}"


def quantize_int8(
    source: Path,
    target: Path,
    calibration: CalibrationSet,
    options: Int8Options,
    *,
    keep_float: Sequence[str],
    only: Sequence[str] | None = None,
) -> None:
    """Write a Q/DQ INT8 graph of ``source`` with ``keep_float`` nodes left in float32.

    ``only`` restricts quantization to those nodes (the sensitivity probes quantize one at a
    time). Ranges come from ``calibration.cache_path`` when it exists, else from a calibration
    pass over the set, which then writes that cache.
    """
    activation = QuantType.QInt8 if options.symmetric_activations else QuantType.QUInt8
    calibration.rewind()  # the reader may have been consumed by an earlier calibration
    # ONNX Runtime writes a shape-inferred copy beside its input: quantize a private copy next
    # to the target (a build's own staging folder), never the shared source, which concurrent
    # builds of the same model would race on.
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".quantize-") as scratch:
        private = Path(scratch) / source.name
        shutil.copyfile(source, private)
        _quantize(private, target, calibration, options, activation, keep_float, only)


def _quantize(
    source: Path,
    target: Path,
    calibration: CalibrationSet,
    options: Int8Options,
    activation: QuantType,
    keep_float: Sequence[str],
    only: Sequence[str] | None,
) -> None:
    quantize_static(
        # The graph, not its path: given a path, ONNX Runtime writes <name>-inferred.onnx beside
        # the source and deletes it again, which races with any other build of the same model.
        model_input=onnx.load(str(source)),
        model_output=target,
        calibration_data_reader=calibration,
        quant_format=QuantFormat.QDQ,
        per_channel=options.per_channel,
        activation_type=activation,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=list(options.op_types) if options.op_types else None,
        nodes_to_quantize=list(only) if only is not None else None,
        nodes_to_exclude=list(keep_float),
        calibrate_method=METHODS[options.method],
        extra_options={
            "ActivationSymmetric": options.symmetric_activations,
            "WeightSymmetric": True,
        },
        calibration_cache_path=calibration.cache_path,
    )
