"""TensorRT backend: runs a serialized plan with cuda-python (GPU hosts only).

Each concurrent caller gets its own execution context, CUDA stream, pinned host buffers and
device buffers from a small pool, so batches from several scheduler threads overlap on the GPU.
TensorRT requires a separate optimization profile per concurrently used context of a plan with
dynamic shapes, so the pool has one context per profile in such a plan (``build_plan`` writes
one per context); a fully static plan has none and its contexts share the implicit one. The
batch limits, pinned height/width and buffer sizes come from the plan, not from settings
(``engines.runtime.tensorrt_shapes``), and each tensor is bound with its own dtype. TensorRT
and cuda-python are imported when an engine is created, never at module import, so this module
imports anywhere.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.errors import EngineLoadError, InferenceError
from engines.precision import Precision
from engines.runtime import onnxruntime
from engines.runtime.base import (
    Engine,
    EngineOptions,
    EngineTensors,
    Int8Recipe,
    TensorInfo,
    check_outputs,
    fill_batch,
    lazy_quantizer,
)
from engines.runtime.host import gpu_name, module_version
from engines.runtime.tensorrt_shapes import binding_dtype, serving_limits

NAME = "tensorrt"

log = logging.getLogger(__name__)
_MAX_ULTRALYTICS_META = 1 << 20
# How long close() waits for batches still running before it frees their buffers.
CLOSE_WAIT_S = 30.0


def split_ultralytics_engine(data: bytes) -> tuple[dict[str, Any] | None, bytes]:
    """Ultralytics ``.engine`` files prefix the plan with a 4-byte little-endian length and that
    many bytes of JSON metadata; plain plans come back unchanged with ``None``."""
    if len(data) < 4:
        return None, data
    length = int.from_bytes(data[:4], "little", signed=True)
    if not 0 < length <= min(_MAX_ULTRALYTICS_META, len(data) - 4):
        return None, data
    try:
        meta = json.loads(data[4 : 4 + length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, data
    if not isinstance(meta, dict):
        return None, data
    return meta, data[4 + length :]


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise EngineLoadError(
            "TensorRT is not installed (pip install 'detect-serve[gpu]' on a GPU host)"
        ) from exc
    return tensorrt


def import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python (cuda-bindings) 12.6+ / 13
    except ImportError as exc:
        raise EngineLoadError("cuda-python is not installed (detect-serve[gpu])") from exc
    return cudart


def _check(result: Any, what: str) -> Any:
    """cuda-python returns (err, *values); raise on any error with the CUDA error name."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise InferenceError(f"{what} failed: {err!r}", fatal=True)
    return values[0] if len(values) == 1 else tuple(values)


@dataclass
class _Slot:
    """One execution context on its own optimization profile, with its stream and buffers."""

    context: Any
    stream: Any
    host: dict[str, np.ndarray]
    device: dict[str, int]
    host_ptrs: list[int]


@dataclass(frozen=True)
class _Profile:
    """The input shape range of one optimization profile."""

    min_shape: tuple[int, ...]
    max_shape: tuple[int, ...]


class TensorRTEngine(EngineTensors):
    backend = NAME

    def __init__(
        self,
        plan_path: Path,
        precision: Precision,
        *,
        max_batch: int | None = None,
        concurrency: int = 2,
    ) -> None:
        """``max_batch`` may lower the plan's own limit (smaller buffers), never raise it;
        ``concurrency`` contexts at most, and no more than a dynamic plan has profiles (a
        static plan's contexts share its implicit one)."""
        trt = import_tensorrt()
        self._cudart = import_cudart()
        meta, plan = split_ultralytics_engine(plan_path.read_bytes())
        self.metadata = meta or {}
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise EngineLoadError(f"TensorRT could not deserialize {plan_path} (version/device?)")
        self._precision = precision
        self._inputs, self._outputs, self._dtypes = self._io_tensors(trt, plan_path)
        shape = tuple(int(d) for d in self._engine.get_tensor_shape(self._inputs[0].name))
        # Static plans have no profile to keep apart: their contexts share the implicit one.
        self._dynamic = any(d < 0 for d in shape)
        profiles = int(self._engine.num_optimization_profiles)
        contexts = max(1, min(concurrency, profiles) if self._dynamic else concurrency)
        self._profiles = [self._profile(i) for i in range(contexts)] if self._dynamic else []
        ranges = [(p.min_shape, p.max_shape) for p in self._profiles]
        plan_max = serving_limits(shape, ranges, None).max_batch
        if max_batch is not None and max_batch > plan_max:
            log.warning(
                "%s: max_batch %d exceeds the plan's %d; using %d",
                plan_path.name,
                max_batch,
                plan_max,
                plan_max,
            )
        limits = serving_limits(shape, ranges, max_batch)
        # Batches smaller than the plan's smallest are filled up to it (copies of the last
        # image), so a static batch-4 plan still answers a single request.
        self._min_batch = limits.min_batch
        self._max_batch = limits.max_batch
        c, h, w = limits.image
        self._image = (c or 3, h, w)
        first = self._inputs[0]
        self._inputs[0] = TensorInfo(first.name, (limits.static_batch, c, h, w), first.dtype)
        device_id = _check(self._cudart.cudaGetDevice(), "cudaGetDevice")
        props = _check(self._cudart.cudaGetDeviceProperties(device_id), "cudaGetDeviceProperties")
        gpu = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        self._device = f"cuda:{device_id} ({gpu.strip()})"
        self._slots: queue.Queue[_Slot] = queue.Queue()
        self._all: list[_Slot] = []
        self._closed = False
        self._inflight = 0
        self._idle = threading.Condition()
        for index in range(contexts):
            self._all.append(self._make_slot(index))
            self._slots.put(self._all[-1])

    def _io_tensors(
        self, trt: Any, plan_path: Path
    ) -> tuple[list[TensorInfo], list[TensorInfo], dict[str, np.dtype[Any]]]:
        """Inputs and outputs by name, with the dtype each is bound with (FP16 for FP16
        tensors: ``half=True`` exports take and give float16)."""
        inputs: list[TensorInfo] = []
        outputs: list[TensorInfo] = []
        dtypes: dict[str, np.dtype[Any]] = {}
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            dtype = binding_dtype(name, str(self._engine.get_tensor_dtype(name).name))
            shape = tuple(d if d >= 0 else None for d in self._engine.get_tensor_shape(name))
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (inputs if is_input else outputs).append(TensorInfo(name, shape, str(dtype)))
            dtypes[name] = dtype
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            found = [(t.name, t.shape) for t in inputs]
            raise EngineLoadError(f"{plan_path}: expected one NCHW image input, found {found}")
        return inputs, outputs, dtypes

    def _profile(self, index: int) -> _Profile:
        name = self._inputs[0].name
        low, _, high = self._engine.get_tensor_profile_shape(name, index)
        return _Profile(tuple(int(d) for d in low), tuple(int(d) for d in high))

    def _make_slot(self, index: int) -> _Slot:
        """Context ``index`` on profile ``index``, with buffers for that profile's largest input."""
        cudart = self._cudart
        context = self._engine.create_execution_context()
        stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        inp = self._inputs[0]
        largest = self._shape(max(self._max_batch, self._min_batch))
        if self._dynamic:
            # Every context starts on profile 0; each concurrent one needs its own (set first).
            if not context.set_optimization_profile_async(index, stream):
                raise EngineLoadError(f"TensorRT refused optimization profile {index}")
            _check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
            if not context.set_input_shape(inp.name, largest):
                raise EngineLoadError(f"TensorRT refused input shape {largest} on profile {index}")
        host: dict[str, np.ndarray] = {}
        device: dict[str, int] = {}
        ptrs: list[int] = []
        for info in [*self._inputs, *self._outputs]:
            full = tuple(int(d) for d in context.get_tensor_shape(info.name))
            if any(d < 0 for d in full):
                raise EngineLoadError(
                    f"output {info.name!r} has a data-dependent shape {full} in the plan; the "
                    "service binds fixed-size outputs only (export with NMS padded to max_det)"
                )
            dtype = self._dtypes[info.name]
            nbytes = max(1, int(np.prod(full))) * dtype.itemsize
            hptr = int(_check(cudart.cudaMallocHost(nbytes), "cudaMallocHost"))
            ptrs.append(hptr)
            buffer = (ctypes.c_byte * nbytes).from_address(hptr)
            host[info.name] = np.frombuffer(memoryview(buffer), dtype=dtype)[: int(np.prod(full))]
            device[info.name] = int(_check(cudart.cudaMalloc(nbytes), "cudaMalloc"))
            if not context.set_tensor_address(info.name, device[info.name]):
                raise EngineLoadError(f"TensorRT refused the address of {info.name}")
        return _Slot(context, stream, host, device, ptrs)

    @property
    def device(self) -> str:
        return self._device

    def _shape(self, batch: int) -> tuple[int, int, int, int]:
        """The input shape of ``batch`` images: H/W as the plan pins them, else its largest."""
        c, h, w = self._image
        largest = self._profiles[0].max_shape if self._profiles else (0, c, 0, 0)
        return batch, c, h or int(largest[2]), w or int(largest[3])

    def warmup(self) -> None:
        for size in sorted({1, self._max_batch}):
            self.infer(np.zeros(self._shape(size), np.float32))

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        n = batch.shape[0]
        if not 1 <= n <= self._max_batch:
            raise InferenceError(f"batch of {n} outside 1..{self._max_batch}")
        with self._idle:
            if self._closed:
                raise InferenceError("engine is closed", fatal=True)
            self._inflight += 1
        try:
            slot = self._slots.get()
            try:
                outputs = self._run(slot, fill_batch(batch, self._min_batch))
                return check_outputs(n, {k: v[:n] for k, v in outputs.items()})
            finally:
                self._slots.put(slot)
        finally:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    def _run(self, slot: _Slot, batch: np.ndarray) -> dict[str, np.ndarray]:
        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        inp = self._inputs[0]
        if self._dynamic and not slot.context.set_input_shape(inp.name, tuple(batch.shape)):
            # Outside the profile (e.g. another height/width than the plan was built for).
            raise InferenceError(f"TensorRT refused input shape {tuple(batch.shape)}")
        if not self._dynamic and tuple(batch.shape) != self._shape(batch.shape[0]):
            raise InferenceError(f"input shape {tuple(batch.shape)} does not fit the static plan")
        staged = slot.host[inp.name][: batch.size].reshape(batch.shape)
        staged[...] = batch.astype(staged.dtype, copy=False)
        _check(
            cudart.cudaMemcpyAsync(
                slot.device[inp.name], staged.ctypes.data, staged.nbytes, h2d, slot.stream
            ),
            "cudaMemcpyAsync H2D",
        )
        if not slot.context.execute_async_v3(slot.stream):
            raise InferenceError("TensorRT execute_async_v3 failed")
        results = {}
        for out in self._outputs:
            shape = tuple(int(d) for d in slot.context.get_tensor_shape(out.name))
            view = slot.host[out.name][: int(np.prod(shape))].reshape(shape)
            _check(
                cudart.cudaMemcpyAsync(
                    view.ctypes.data, slot.device[out.name], view.nbytes, d2h, slot.stream
                ),
                "cudaMemcpyAsync D2H",
            )
            results[out.name] = view
        _check(cudart.cudaStreamSynchronize(slot.stream), "cudaStreamSynchronize")
        # Copy out of the pinned buffers (the slot is reused by the next batch); floats as
        # float32, as the decoders want them (FP16 outputs of half exports included).
        return {
            k: v.astype(np.float32) if v.dtype.kind == "f" else v.copy() for k, v in results.items()
        }

    def close(self) -> None:
        """Refuse new batches, wait for those running, then free the buffers they use."""
        with self._idle:
            if self._closed:
                return
            self._closed = True
            if not self._idle.wait_for(lambda: self._inflight == 0, timeout=CLOSE_WAIT_S):
                # Freeing memory a running kernel writes to would corrupt it: leak instead.
                log.error("TensorRT engine closed with batches still running; buffers not freed")
                return
        for slot in self._all:
            for ptr in slot.device.values():
                self._cudart.cudaFree(ptr)
            for ptr in slot.host_ptrs:
                self._cudart.cudaFreeHost(ptr)
            self._cudart.cudaStreamDestroy(slot.stream)


def tensorrt_available() -> bool:
    """TensorRT's Python package is importable here (found without importing it)."""
    return importlib.util.find_spec("tensorrt") is not None


# The TensorRT recipe (engines.build.int8.tensorrt_recipe), loaded only when a build quantizes.
quantize_for_tensorrt = lazy_quantizer(
    "engines.build.int8.tensorrt_recipe", "quantize_for_tensorrt"
)


# The graph TensorRT's explicit quantization wants (see engines.build.int8.tensorrt_recipe).
# Its name is part of every TensorRT INT8 cache key: change it when the recipe changes.
INT8_RECIPE = Int8Recipe(
    name=(
        "tensorrt-v2: symmetric int8, per-channel weights, no bias Q/DQ, Q/DQ at quantized-op "
        "inputs only, opset 19, FP16 remainder, FP32 decode head"
    ),
    quantize=quantize_for_tensorrt,
    symmetric_activations=True,  # the only INT8 TensorRT takes
)
GRAPH_SUFFIX = ".trt.onnx"
PLAN_SUFFIX = ".plan"


class TensorRTBackend:
    """Compiles each variant ONNX into a plan for this GPU and runs the plan."""

    name = NAME
    int8 = INT8_RECIPE
    graph_suffix = GRAPH_SUFFIX
    # Judged before the compile with TensorRT's numerics: fake-quant, on CPU.
    accuracy_session_config = onnxruntime.FAKE_QUANT
    revalidate_compiled = True  # TensorRT picks its own kernels and fusions: measure the plan

    def open(self, artifact: Path, precision: Precision, options: EngineOptions) -> Engine:
        engine: Engine = TensorRTEngine(artifact, precision, max_batch=options.max_batch)
        return engine

    def compile(
        self, onnx_path: Path, cache_dir: Path, max_batch: int, input_size: tuple[int, int]
    ) -> Path:
        """``int8.trt.onnx`` -> ``int8.plan`` beside it (``engines.build.tensorrt_plan``)."""
        # The plan compiler belongs to the offline build; the server never imports it.
        from engines.build.tensorrt_plan import compile_plan

        return compile_plan(onnx_path, cache_dir, max_batch, input_size)

    def tool_versions(self) -> dict[str, str]:
        # The ONNX a plan is compiled from is made (quantized) with onnx + onnxruntime.
        return {**onnxruntime.BACKEND.tool_versions(), "tensorrt": module_version("tensorrt")}

    def device(self, providers: tuple[str, ...]) -> str:
        return gpu_name() or "no-gpu"


BACKEND = TensorRTBackend()
