"""INT8 variants as Q/DQ graphs, calibrated on real images (ONNX Runtime's static quantizer).

Q/DQ is what both ONNX Runtime's CPU provider and strongly typed TensorRT networks consume: the
precision lives in the graph, so the same ONNX is the artifact on every backend. Calibration
ranges are cached beside the build, so re-quantizing with a different float-kept set (mixed
precision search) costs seconds, not another calibration pass.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from engines.calibration import CalibrationFeeds

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
    # TensorRT only takes symmetric (zero-point 0) activations; ONNX Runtime takes both.
    symmetric_activations: bool = False
    # Q/DQ at convolution inputs only: the placement TensorRT's own quantization toolkit uses,
    # and measurably closer to FP32 here than also quantizing pools and activations.
    # None = every op the quantizer supports (the whole graph, decode head included).
    op_types: tuple[str, ...] | None = ("Conv",)


def quantize_int8(
    source: Path,
    target: Path,
    feeds: CalibrationFeeds | None,
    options: Int8Options,
    *,
    keep_float: Sequence[str],
    ranges_cache: Path,
) -> None:
    """Write a Q/DQ INT8 graph of ``source`` with ``keep_float`` nodes left in float32.

    ``feeds`` may be None when ``ranges_cache`` already holds this method's ranges.
    """
    activation = QuantType.QInt8 if options.symmetric_activations else QuantType.QUInt8
    if feeds is not None:
        feeds.rewind()  # the reader may have been consumed by an earlier calibration
    quantize_static(
        model_input=source,
        model_output=target,
        calibration_data_reader=feeds,
        quant_format=QuantFormat.QDQ,
        per_channel=options.per_channel,
        activation_type=activation,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=list(options.op_types) if options.op_types else None,
        nodes_to_exclude=list(keep_float),
        calibrate_method=METHODS[options.method],
        extra_options={
            "ActivationSymmetric": options.symmetric_activations,
            "WeightSymmetric": True,
        },
        calibration_cache_path=ranges_cache,
    )
