"""The ``Engine`` protocol every backend implements.

An engine runs one built variant (one precision) of one model. Callers hand it a batch whose
leading dimension is at most ``max_batch`` and get one array per output with the same leading
dimension back. Backends import their GPU libraries lazily so this module (and everything that
only needs the protocol) imports on a machine without CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from engines.precision import Precision


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


@dataclass(frozen=True)
class Int8Recipe:
    """How a backend wants its INT8 Q/DQ graphs quantized (the build turns it into options)."""

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
    def revalidate_compiled(self) -> bool:
        """True when ``compile`` changes the numerics (its own kernels, fusions): the build then
        measures the compiled artifact's accuracy again instead of trusting the ONNX's."""

    def open(self, artifact: Path, precision: Precision, options: EngineOptions) -> Engine:
        """Load an artifact this backend compiled (or a variant ONNX) as a runnable engine."""

    def compile(self, onnx_path: Path, out_dir: Path, max_batch: int) -> Path:
        """The artifact to serve for a variant ONNX: the ONNX itself, or a compiled plan."""

    def tool_versions(self) -> dict[str, str]:
        """Versions of the tools whose change changes what an artifact computes."""

    def device(self, providers: tuple[str, ...]) -> str:
        """The device an artifact is tied to on this host (part of every build's cache key)."""
