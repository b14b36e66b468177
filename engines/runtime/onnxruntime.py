"""ONNX Runtime backend: CPU everywhere; CUDA or TensorRT execution providers on GPU hosts."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from engines.errors import EngineLoadError, InferenceError
from engines.precision import Precision
from engines.runtime.base import (
    Engine,
    EngineOptions,
    EngineTensors,
    Int8Recipe,
    TensorInfo,
    check_outputs,
    fill_batch,
    input_shape,
    quantize_for_onnxruntime_cpu,
)
from engines.runtime.host import cpu_device, gpu_name, module_version

log = logging.getLogger(__name__)

_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
    "tensor(double)": "float64",
}

# Errors that mean the session itself is broken (device lost, out of memory), not just one batch.
_FATAL_MARKERS = ("CUDA failure", "cudaErrorIllegalAddress", "device-side assert", "out of memory")


def _infos(args: Sequence[Any]) -> list[TensorInfo]:
    """ORT NodeArgs -> TensorInfo; symbolic dims (strings) become None."""
    out = []
    for a in args:
        shape = tuple(d if isinstance(d, int) else None for d in a.shape)
        out.append(TensorInfo(a.name, shape, _ORT_DTYPES.get(a.type, a.type)))
    return out


NAME = "onnxruntime"
# Session config under which a CPU session runs Q/DQ nodes as written (quantize, dequantize,
# float math: what TensorRT computes) instead of fusing them into ONNX Runtime's integer kernels.
FAKE_QUANT: Mapping[str, str] = MappingProxyType({"session.disable_quant_qdq": "1"})


def _metadata_size(session: Any) -> tuple[int, int] | None:
    """The exporter's ``imgsz`` metadata (``640`` or ``[h, w]``) as (height, width), if any."""
    text = session.get_modelmeta().custom_metadata_map.get("imgsz")
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    if isinstance(value, int):
        return value, value
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return value[0], value[1]
    return None


class OnnxRuntimeEngine(EngineTensors):
    """One ``InferenceSession`` over one variant ONNX file."""

    backend = NAME

    def __init__(
        self,
        path: Path,
        precision: Precision,
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int = 0,
        max_batch: int = 8,
        input_size: tuple[int, int] | None = None,
        session_config: Mapping[str, str] | None = None,
    ) -> None:
        """``input_size`` (height, width) sizes warm-up batches of a model whose input has
        symbolic height/width; without it the model's ``imgsz`` metadata is used.
        ``session_config``: ONNX Runtime session config entries, e.g. the fake-quant
        ``session.disable_quant_qdq`` under which TensorRT-bound INT8 graphs are judged."""
        import onnxruntime as ort

        available = set(ort.get_available_providers())
        missing = [p for p in providers if p not in available]
        if missing:
            raise EngineLoadError(
                f"ONNX Runtime providers {missing} are not available here "
                f"(available: {sorted(available)}); install onnxruntime-gpu or change "
                "DETECT_ORT_PROVIDERS"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        for key, value in (session_config or {}).items():
            options.add_session_config_entry(key, value)
        try:
            self._session = ort.InferenceSession(str(path), options, providers=list(providers))
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise EngineLoadError(f"ONNX Runtime cannot load {path}: {exc}") from exc
        self._inputs = _infos(self._session.get_inputs())
        self._outputs = _infos(self._session.get_outputs())
        self._input_name = self._inputs[0].name
        self._input_dtype = np.float16 if self._inputs[0].dtype == "float16" else np.float32
        fixed_batch = self._inputs[0].shape[0]
        # A static batch dim is the model's own limit: such graphs often bake the batch into
        # Reshape constants, so a larger batch would fail however the input is declared.
        self._fixed_batch = fixed_batch
        self._max_batch = fixed_batch if fixed_batch is not None else max_batch
        self._input_size = input_size or _metadata_size(self._session)
        self._precision = precision
        self._providers = self._session.get_providers()
        self._closed = False
        self._lock = threading.Lock()  # close() vs a concurrent infer()

    @property
    def device(self) -> str:
        first = self._providers[0]
        return "cpu" if first == "CPUExecutionProvider" else f"cuda:0 ({first})"

    def warmup(self) -> None:
        for size in sorted({1, self._max_batch}):
            shape = input_shape(self._inputs[0], size, self._input_size)
            self.infer(np.zeros(shape, dtype=np.float32))

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._closed:
            raise InferenceError("engine is closed", fatal=True)
        if batch.shape[0] > self._max_batch:
            raise InferenceError(f"batch of {batch.shape[0]} exceeds max_batch {self._max_batch}")
        count = batch.shape[0]
        if self._fixed_batch is not None and count < self._fixed_batch:
            # A static-batch graph takes exactly its batch; the extra outputs are dropped below.
            batch = fill_batch(batch, self._fixed_batch)
        feed = {self._input_name: np.ascontiguousarray(batch, dtype=self._input_dtype)}
        try:
            values = self._session.run(None, feed)
        except Exception as exc:
            fatal = any(marker in str(exc) for marker in _FATAL_MARKERS)
            raise InferenceError(f"ONNX Runtime inference failed: {exc}", fatal=fatal) from exc
        outputs = {
            info.name: np.asarray(v)[:count] for info, v in zip(self._outputs, values, strict=True)
        }
        return check_outputs(count, outputs)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                del self._session


class OnnxRuntimeBackend:
    """Runs the variant ONNX itself (no compile step); CPU unless GPU providers are named."""

    name = NAME
    int8 = Int8Recipe(name="onnxruntime-cpu", quantize=quantize_for_onnxruntime_cpu)
    graph_suffix = ".onnx"
    accuracy_session_config: Mapping[str, str] = MappingProxyType({})  # judged as it is served
    revalidate_compiled = False

    def open(self, artifact: Path, precision: Precision, options: EngineOptions) -> Engine:
        return OnnxRuntimeEngine(
            artifact,
            precision,
            providers=options.providers,
            intra_op_threads=options.intra_op_threads,
            max_batch=options.max_batch,
            input_size=options.input_size,
            session_config=options.session_config,
        )

    def compile(
        self, onnx_path: Path, cache_dir: Path, max_batch: int, input_size: tuple[int, int]
    ) -> Path:
        return onnx_path

    def tool_versions(self) -> dict[str, str]:
        return {"onnx": module_version("onnx"), "onnxruntime": module_version("onnxruntime")}

    def device(self, providers: tuple[str, ...]) -> str:
        on_gpu = bool(providers) and providers[0] != "CPUExecutionProvider"
        return (gpu_name() or "no-gpu") if on_gpu else cpu_device()


BACKEND = OnnxRuntimeBackend()
