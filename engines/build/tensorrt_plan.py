"""Compile a variant ONNX into a TensorRT plan (GPU hosts only; TensorRT imported lazily).

Networks are strongly typed: the precision is already in the ONNX graph (an FP16-converted
graph, or Q/DQ nodes for INT8), which is the only mode TensorRT 11 has (weak typing, the FP16/INT8
builder flags and calibrators were removed) and the `STRONGLY_TYPED` flag on 10.x.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.errors import EngineLoadError
from engines.runtime.host import gpu_name
from engines.runtime.tensorrt import import_tensorrt


@dataclass(frozen=True)
class PlanInfo:
    tensorrt_version: str
    device: str
    sha256: str
    path: Path


def _network_flags(trt: Any) -> int:
    major = int(str(trt.__version__).split(".")[0])
    if major >= 11:
        return 0  # strongly typed is the only mode
    flag = trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    return 1 << int(flag)


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    *,
    min_batch: int = 1,
    opt_batch: int,
    max_batch: int,
    workspace_bytes: int,
    timing_cache_path: Path | None,
) -> PlanInfo:
    """Parse ``onnx_path`` into a strongly typed network and serialize a plan to ``plan_path``.

    The input's batch dimension gets one optimization profile (min/opt/max); the timing cache
    at ``timing_cache_path`` is read if present and written back, which makes rebuilds fast.
    """
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineLoadError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]
        profile.set_shape(tensor.name, (min_batch, *rest), (opt_batch, *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)
    cache_bytes = (
        timing_cache_path.read_bytes() if timing_cache_path and timing_cache_path.is_file() else b""
    )
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineLoadError(f"TensorRT failed to build a plan from {onnx_path} (see its log)")
    data = bytes(serialized)
    plan_path.write_bytes(data)
    if timing_cache_path is not None:
        timing_cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return PlanInfo(
        tensorrt_version=str(trt.__version__),
        device=gpu_name() or "unknown-gpu",
        sha256=hashlib.sha256(data).hexdigest(),
        path=plan_path,
    )
