"""The ``Engine`` protocol every backend implements.

An engine runs one built variant (one precision) of one model. Callers hand it a batch whose
leading dimension is at most ``max_batch`` and get one array per output with the same leading
dimension back. Backends import their GPU libraries lazily so this module (and everything that
only needs the protocol) imports on a machine without CUDA.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from engines.precision import Precision

if TYPE_CHECKING:  # the INT8 quantizer's argument types are build code
    from engines.build.int8.calibration import CalibrationSet
    from engines.build.int8.quantize import Int8Options


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape and dtype of an engine input or output. Symbolic dims are ``None``."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str


@runtime_checkable
class Engine(Protocol):
    """A loaded, runnable variant of a detection model."""

    @property
    def inputs(self) -> list[TensorInfo]: ...

    @property
    def outputs(self) -> list[TensorInfo]: ...

    @property
    def max_batch(self) -> int: ...

    @property
    def precision(self) -> Precision: ...

    @property
    def backend(self) -> str: ...

    @property
    def device(self) -> str: ...

    def warmup(self) -> None:
        """Run dummy batches so the first real request does not pay for lazy initialisation."""

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one NCHW float32 batch; every output has the batch's leading dimension."""

    def close(self) -> None:
        """Release device memory and sessions. Idempotent."""


class EngineTensors:
    """The descriptive half of ``Engine`` that every backend fills in the same way."""

    _inputs: list[TensorInfo]
    _outputs: list[TensorInfo]
    _max_batch: int
    _precision: Precision

    @property
    def inputs(self) -> list[TensorInfo]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorInfo]:
        return self._outputs

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def precision(self) -> Precision:
        return self._precision


def check_outputs(batch_size: int, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Reject backend outputs whose leading dimension does not match the input batch."""
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != batch_size:
            raise ValueError(
                f"output {name!r} has shape {value.shape}, expected leading dimension {batch_size}"
            )
    return outputs


@dataclass(frozen=True)
class EngineOptions:
    """How to open an engine, whatever the backend (each takes the options it understands)."""

    max_batch: int = 8
    providers: tuple[str, ...] = ("CPUExecutionProvider",)  # ONNX Runtime execution providers
    intra_op_threads: int = 0  # 0 = the runtime's default
    # (height, width) for warm-up batches of a model whose input height/width are symbolic
    input_size: tuple[int, int] | None = None
    # ONNX Runtime session config entries (the build's fake-quant check of TensorRT graphs).
    session_config: Mapping[str, str] = field(default_factory=dict)


class Int8Quantizer(Protocol):
    """Writes the INT8 Q/DQ graph of ``source`` to ``target``, ``keep_float`` nodes left in
    float; ``only`` restricts quantization to those nodes (the sensitivity probes)."""

    def __call__(
        self,
        source: Path,
        target: Path,
        calibration: CalibrationSet,
        options: Int8Options,
        *,
        keep_float: Sequence[str],
        only: Sequence[str] | None = None,
    ) -> None: ...


def lazy_quantizer(module: str, function: str) -> Int8Quantizer:
    """A backend's INT8 recipe named by module and function. Quantizers are build code:
    imported when a build quantizes, never by the server."""

    def quantize(
        source: Path,
        target: Path,
        calibration: CalibrationSet,
        options: Int8Options,
        *,
        keep_float: Sequence[str],
        only: Sequence[str] | None = None,
    ) -> None:
        recipe: Int8Quantizer = getattr(importlib.import_module(module), function)
        recipe(source, target, calibration, options, keep_float=keep_float, only=only)

    return quantize


# ONNX Runtime's CPU recipe (engines.build.int8.quantize).
quantize_for_onnxruntime_cpu = lazy_quantizer("engines.build.int8.quantize", "quantize_int8")


@dataclass(frozen=True)
class Int8Recipe:
    """How a backend wants its INT8 Q/DQ graphs made: the quantizer that writes them and the
    options it needs (the build turns them into ``Int8Options``)."""

    # Part of every INT8 cache key: a changed recipe never reuses graphs the old one made.
    name: str = "onnxruntime-cpu"
    quantize: Int8Quantizer = quantize_for_onnxruntime_cpu
    # TensorRT takes only symmetric (zero-point 0) activations; ONNX Runtime takes both, and on
    # AVX2 CPUs symmetric int8 activations are shifted to uint8 and saturate its u8s8 kernels.
    symmetric_activations: bool = False


class Backend(Protocol):
    """One row of the backend table (``engines.runtime.backends``): everything the build and
    the server need to know about one way of running a variant."""

    @property
    def name(self) -> str: ...

    @property
    def int8(self) -> Int8Recipe: ...

    @property
    def graph_suffix(self) -> str:
        """How this backend's variant ONNX files end (``int8.onnx``, ``int8.trt.onnx``), so the
        builds of several backends live side by side in one model folder."""

    @property
    def accuracy_session_config(self) -> Mapping[str, str]:
        """ONNX Runtime session config under which the build judges this backend's variant
        ONNX against FP32 before any compile. Empty: as ONNX Runtime serves it, on the build's
        providers. Otherwise on CPU with these entries (TensorRT: fake-quant, which computes
        Q/DQ as TensorRT does, instead of ONNX Runtime's CPU integer kernels)."""

    @property
    def revalidate_compiled(self) -> bool:
        """True when ``compile`` changes the numerics (its own kernels, fusions): the build then
        measures the compiled artifact's accuracy again instead of trusting the ONNX's."""

    def open(self, artifact: Path, precision: Precision, options: EngineOptions) -> Engine:
        """Load an artifact this backend compiled (or a variant ONNX) as a runnable engine."""

    def compile(
        self, onnx_path: Path, cache_dir: Path, max_batch: int, input_size: tuple[int, int]
    ) -> Path:
        """The artifact to serve for a variant ONNX: the ONNX itself, or a compiled plan written
        beside it. ``cache_dir`` keeps compile caches across builds; ``input_size`` (height,
        width) fills symbolic input dims. ``CompilerUnavailableError`` when this host cannot
        compile (the build then records the variant as pending)."""

    def tool_versions(self) -> dict[str, str]:
        """Versions of the tools whose change changes what an artifact computes."""

    def device(self, providers: tuple[str, ...]) -> str:
        """The device an artifact is tied to on this host (part of every build's cache key)."""


def input_shape(
    info: TensorInfo, batch: int, input_size: tuple[int, int] | None
) -> tuple[int, int, int, int]:
    """A concrete NCHW shape for ``info``: ``batch`` images of ``input_size`` (height, width).

    Symbolic spatial dims take ``input_size``: feeding 1 instead makes a YOLO graph fail in
    its first Concat of upsampled and strided feature maps, and times the wrong work anyway.
    """
    _, c, h, w = info.shape
    if h is None or w is None:
        if input_size is None:
            raise ValueError(f"input {info.name!r} {info.shape} has symbolic height/width")
        h, w = h or input_size[0], w or input_size[1]
    return batch, c or 3, h, w


def fill_batch(batch: np.ndarray, size: int) -> np.ndarray:
    """``batch`` filled up to ``size`` images with copies of its last image (copies, not zeros,
    keep an in-graph NMS honest); the caller drops the extra outputs."""
    if batch.shape[0] >= size:
        return batch
    fill = np.repeat(batch[-1:], size - batch.shape[0], axis=0)
    return np.concatenate([batch, fill])
