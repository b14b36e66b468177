"""TensorRT backend: runs a serialized plan with cuda-python (GPU hosts only).

Each concurrent caller gets its own execution context, CUDA stream, pinned host buffers and
device buffers (sized for ``max_batch``) from a small pool, so batches from several scheduler
threads overlap on the GPU. TensorRT and cuda-python are imported when an engine is created,
never at module import, so this module imports anywhere.
"""

from __future__ import annotations

import ctypes
import json
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
)
from engines.runtime.host import gpu_name, module_version

NAME = "tensorrt"

_MAX_ULTRALYTICS_META = 1 << 20


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
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
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
    """One execution context with its own stream and buffers."""

    context: Any
    stream: Any
    host: dict[str, np.ndarray]
    device: dict[str, int]
    host_ptrs: list[int]


class TensorRTEngine(EngineTensors):
    backend = NAME

    def __init__(
        self, plan_path: Path, precision: Precision, *, max_batch: int, concurrency: int = 2
    ) -> None:
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
        self._max_batch = max_batch
        self._inputs: list[TensorInfo] = []
        self._outputs: list[TensorInfo] = []
        self._dtypes: dict[str, np.dtype[Any]] = {}
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            shape = tuple(d if d >= 0 else None for d in self._engine.get_tensor_shape(name))
            info = TensorInfo(name, (None, *shape[1:]), str(dtype))
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self._inputs if is_input else self._outputs).append(info)
            self._dtypes[name] = dtype
        device_id = _check(self._cudart.cudaGetDevice(), "cudaGetDevice")
        props = _check(self._cudart.cudaGetDeviceProperties(device_id), "cudaGetDeviceProperties")
        gpu = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        self._device = f"cuda:{device_id} ({gpu.strip()})"
        self._slots: queue.Queue[_Slot] = queue.Queue()
        self._all: list[_Slot] = [self._make_slot() for _ in range(max(1, concurrency))]
        for slot in self._all:
            self._slots.put(slot)
        self._closed = False
        self._lock = threading.Lock()

    def _make_slot(self) -> _Slot:
        cudart = self._cudart
        context = self._engine.create_execution_context()
        stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        host: dict[str, np.ndarray] = {}
        device: dict[str, int] = {}
        ptrs: list[int] = []
        for info in [*self._inputs, *self._outputs]:
            full = (self._max_batch, *(d or 1 for d in info.shape[1:]))
            dtype = self._dtypes[info.name]
            nbytes = int(np.prod(full)) * dtype.itemsize
            hptr = int(_check(cudart.cudaMallocHost(nbytes), "cudaMallocHost"))
            buffer = (ctypes.c_byte * nbytes).from_address(hptr)
            host[info.name] = np.frombuffer(memoryview(buffer), dtype=dtype).reshape(full)
            device[info.name] = int(_check(cudart.cudaMalloc(nbytes), "cudaMalloc"))
            context.set_tensor_address(info.name, device[info.name])
            ptrs.append(hptr)
        return _Slot(context, stream, host, device, ptrs)

    @property
    def device(self) -> str:
        return self._device

    def warmup(self) -> None:
        shape = (self._max_batch, *(d or 1 for d in self._inputs[0].shape[1:]))
        for size in sorted({1, self._max_batch}):
            self.infer(np.zeros((size, *shape[1:]), np.float32))

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._closed:
            raise InferenceError("engine is closed", fatal=True)
        n = batch.shape[0]
        if not 1 <= n <= self._max_batch:
            raise InferenceError(f"batch of {n} outside 1..{self._max_batch}")
        slot = self._slots.get()
        try:
            return check_outputs(n, self._run(slot, batch))
        finally:
            self._slots.put(slot)

    def _run(self, slot: _Slot, batch: np.ndarray) -> dict[str, np.ndarray]:
        cudart, n = self._cudart, batch.shape[0]
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        inp = self._inputs[0]
        staged = slot.host[inp.name][:n]
        staged[...] = batch.astype(staged.dtype, copy=False)
        slot.context.set_input_shape(inp.name, tuple(batch.shape))
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
            shape = tuple(slot.context.get_tensor_shape(out.name))
            view = slot.host[out.name].reshape(-1)[: int(np.prod(shape))].reshape(shape)
            _check(
                cudart.cudaMemcpyAsync(
                    view.ctypes.data, slot.device[out.name], view.nbytes, d2h, slot.stream
                ),
                "cudaMemcpyAsync D2H",
            )
            results[out.name] = view
        _check(cudart.cudaStreamSynchronize(slot.stream), "cudaStreamSynchronize")
        # Copy out of the pinned buffers: the slot is reused by the next batch.
        return {k: v.astype(np.float32) for k, v in results.items()}

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for slot in self._all:
            for ptr in slot.device.values():
                self._cudart.cudaFree(ptr)
            for ptr in slot.host_ptrs:
                self._cudart.cudaFreeHost(ptr)
            self._cudart.cudaStreamDestroy(slot.stream)


class TensorRTBackend:
    """Compiles each variant ONNX into a plan for this GPU and runs the plan."""

    name = NAME
    # Symmetric activations: the only INT8 TensorRT takes. Its own recipe can replace this.
    int8 = Int8Recipe(symmetric_activations=True)
    revalidate_compiled = True  # TensorRT picks its own kernels and fusions: measure the plan

    def open(self, artifact: Path, precision: Precision, options: EngineOptions) -> Engine:
        engine: Engine = TensorRTEngine(artifact, precision, max_batch=options.max_batch)
        return engine

    def compile(self, onnx_path: Path, out_dir: Path, max_batch: int) -> Path:
        # The plan compiler belongs to the offline build; the server never imports it.
        from engines.build.tensorrt_plan import build_plan

        plan = onnx_path.with_suffix(".plan")
        build_plan(
            onnx_path,
            plan,
            opt_batch=max(1, max_batch // 2),
            max_batch=max_batch,
            workspace_bytes=2 << 30,
            timing_cache_path=out_dir / "timing.cache",  # kept beside the plans, reused
        )
        return plan

    def tool_versions(self) -> dict[str, str]:
        # The ONNX a plan is compiled from is made (quantized) with onnx + onnxruntime.
        return {**onnxruntime.BACKEND.tool_versions(), "tensorrt": module_version("tensorrt")}

    def device(self, providers: tuple[str, ...]) -> str:
        return gpu_name() or "no-gpu"


BACKEND = TensorRTBackend()
