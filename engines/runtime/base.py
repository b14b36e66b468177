"""The ``Engine`` protocol every backend implements.

An engine runs one built variant (one precision) of one model. Callers hand it a batch whose
leading dimension is at most ``max_batch`` and get one array per output with the same leading
dimension back. Backends import their GPU libraries lazily so this module (and everything that
only needs the protocol) imports on a machine without CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def check_outputs(batch_size: int, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Reject backend outputs whose leading dimension does not match the input batch."""
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != batch_size:
            raise ValueError(
                f"output {name!r} has shape {value.shape}, expected leading dimension {batch_size}"
            )
    return outputs


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
