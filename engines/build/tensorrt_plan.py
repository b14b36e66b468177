"""Compile a variant ONNX into a TensorRT plan (GPU hosts only; TensorRT imported lazily).

Networks are strongly typed: the precision is already in the ONNX graph (an FP16-converted
graph, or Q/DQ nodes for INT8), which is the only mode TensorRT 11 has (weak typing, the FP16/INT8
builder flags and calibrators were removed) and the `STRONGLY_TYPED` flag on 10.x.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.errors import EngineLoadError
from engines.runtime.host import gpu_name
from engines.runtime.tensorrt import import_tensorrt

log = logging.getLogger(__name__)

# Each execution context used concurrently needs its own optimization profile (TensorRT's
# IExecutionContext contract); the runtime's pool has one context per profile.
DEFAULT_CONTEXTS = 2


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
    # The flag's integer differs between majors (1 on 10.x, 0 on 11.x): always shift by name.
    flag = trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    return 1 << int(flag)


def timing_cache_name(device: str, tensorrt_version: str) -> str:
    """Timing caches hold per-GPU kernel timings: one file per (GPU model, TensorRT version)."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{device}-trt{tensorrt_version}").strip("-")
    return f"timing-{slug}.cache"


def timing_cache_path(folder: Path) -> Path:
    """This host's timing cache in ``folder`` (requires TensorRT to name the version)."""
    trt = import_tensorrt()
    return folder / timing_cache_name(gpu_name() or "unknown-gpu", str(trt.__version__))


def profile_shapes(
    shape: Sequence[int], *, min_batch: int, opt_batch: int, max_batch: int, size: tuple[int, int]
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) shapes of an NCHW input: the batch range, and the model's input size
    wherever the ONNX left height/width symbolic (-1); a profile takes no -1."""
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(
            f"batch range must be 1 <= min <= opt <= max: {min_batch}/{opt_batch}/{max_batch}"
        )
    rest = list(shape[1:])
    if len(rest) == 3:
        rest[1] = rest[1] if rest[1] > 0 else size[0]
        rest[2] = rest[2] if rest[2] > 0 else size[1]
    if any(d < 0 for d in rest):
        raise EngineLoadError(
            f"input shape {tuple(shape)} has a symbolic dimension besides N, H, W"
        )
    return (min_batch, *rest), (opt_batch, *rest), (max_batch, *rest)


def _load_timing_cache(trt: Any, config: Any, path: Path | None) -> None:
    """Use the cache at ``path`` if TensorRT accepts it; one made on another GPU or TensorRT
    version (the engines volume outlives the image) is ignored with a log line, never fatal."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return
    log.warning("timing cache %s does not match this GPU/TensorRT; starting an empty one", path)
    if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
        raise EngineLoadError("TensorRT refused an empty timing cache")


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    *,
    min_batch: int = 1,
    opt_batch: int,
    max_batch: int,
    workspace_bytes: int,
    timing_cache_path: Path | None,
    input_size: tuple[int, int] = (640, 640),
    contexts: int = DEFAULT_CONTEXTS,
) -> PlanInfo:
    """Parse ``onnx_path`` into a strongly typed network and serialize a plan to ``plan_path``.

    The plan gets ``contexts`` identical optimization profiles (min/opt/max batch), one per
    execution context the runtime runs concurrently. The timing cache at ``timing_cache_path``
    is read if it matches this GPU and TensorRT, and written back, which makes rebuilds fast.
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
    for _ in range(max(1, contexts)):
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shapes = profile_shapes(
                tuple(tensor.shape),
                min_batch=min_batch,
                opt_batch=opt_batch,
                max_batch=max_batch,
                size=input_size,
            )
            profile.set_shape(tensor.name, *shapes)
        config.add_optimization_profile(profile)
    _load_timing_cache(trt, config, timing_cache_path)
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
