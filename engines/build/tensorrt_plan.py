"""Compile a variant ONNX into a TensorRT plan (GPU hosts only; TensorRT imported lazily).

Networks are strongly typed: the precision is already in the ONNX graph (an FP16-converted
graph, or Q/DQ nodes for INT8), which is the only mode TensorRT 11 has (weak typing, the FP16/INT8
builder flags and calibrators were removed) and the `STRONGLY_TYPED` flag on 10.x.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.build.tensorrt_support import plan_request
from engines.errors import CompilerUnavailableError, EngineLoadError
from engines.runtime.host import gpu_name
from engines.runtime.tensorrt import GRAPH_SUFFIX, PLAN_SUFFIX, import_tensorrt, tensorrt_available
from engines.runtime.tensorrt_shapes import profile_shapes

__all__ = [
    "PlanInfo",
    "build_plan",
    "compile_plan",
    "profile_shapes",
    "timing_cache_name",
    "timing_cache_path",
]

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

    A network with dynamic inputs gets ``contexts`` identical optimization profiles, one per
    execution context the runtime runs concurrently: batch ``min_batch``..``max_batch`` (a
    static batch stays as it is) and symbolic height/width pinned to ``input_size``
    (``engines.runtime.tensorrt_shapes``). A fully static network gets none. The timing cache
    at ``timing_cache_path`` is read if it matches this GPU and TensorRT, and written back,
    which makes rebuilds fast.
    """
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineLoadError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    shapes = {
        tensor.name: profile_shapes(
            tuple(int(d) for d in tensor.shape),
            min_batch=min_batch,
            opt_batch=opt_batch,
            max_batch=max_batch,
            size=input_size,
        )
        for tensor in inputs
    }
    # A fully static network needs no profile, and its contexts may share the implicit one
    # (one profile per concurrent context is a rule of dynamic shapes only).
    dynamic = any(d < 0 for tensor in inputs for d in tensor.shape)
    for _ in range(max(1, contexts) if dynamic else 0):
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in shapes.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    _load_timing_cache(trt, config, timing_cache_path)
    try:
        serialized = builder.build_serialized_network(network, config)
    except (RuntimeError, TypeError, ValueError) as exc:  # pybind11's translations
        failed = f"TensorRT failed to build a plan from {onnx_path.name}"
        raise EngineLoadError(f"{failed}: {exc}") from exc
    if serialized is None:
        raise EngineLoadError(
            f"TensorRT failed to build a plan from {onnx_path.name} (its log above says why)"
        )
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


def compile_plan(
    onnx_path: Path, cache_dir: Path, max_batch: int, input_size: tuple[int, int]
) -> Path:
    """The TensorRT backend's ``compile``: ``int8.trt.onnx`` -> ``int8.plan`` beside it.

    What TensorRT cannot take is refused first, from the ONNX alone and on any host
    (``ModelFormatError`` naming it); then, where TensorRT is missing, the variant is left
    pending (``CompilerUnavailableError``). The plan's batch range is 1..``max_batch`` with the
    optimum at the max, or the model's own static batch; H/W are pinned to ``input_size``.
    The timing cache lives in ``cache_dir`` (one per GPU model and TensorRT version).
    """
    request = plan_request(onnx_path, max_batch, input_size)
    if not tensorrt_available():
        raise CompilerUnavailableError(
            "TensorRT is not installed here: the plan is compiled and checked against FP32 "
            "on the GPU host at first start (detect-serve serve --prepare)"
        )
    plan = onnx_path.with_name(onnx_path.name.removesuffix(GRAPH_SUFFIX) + PLAN_SUFFIX)
    build_plan(
        onnx_path,
        plan,
        opt_batch=request.max_batch,
        max_batch=request.max_batch,
        workspace_bytes=2 << 30,
        timing_cache_path=timing_cache_path(cache_dir),
        input_size=input_size,
    )
    return plan
