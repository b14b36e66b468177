"""The shape and dtype rules of the TensorRT path, kept free of TensorRT so they run anywhere.

One rule set serves the plan builder and the runtime, so the two cannot drift apart:

- **Optimization profiles** (``profile_shapes``): batch from 1 to the model's own max batch, the
  optimum at the max (under load the dynamic batcher fills batches to the max, which is where
  throughput counts); height and width pinned to the model's input size. A static batch is the
  model's own limit: its profile is that batch alone (TensorRT takes no range on a static
  dim, and such graphs often bake the batch into Reshape constants anyway).
- **Serving limits** (``serving_limits``): the largest batch the scheduler may hand the engine
  is the plan's (never above a static batch), and smaller batches than the plan's smallest are
  filled up with copies of the last image (``engines.runtime.base.fill_batch``, as on ONNX
  Runtime).
- **Binding dtypes** (``binding_dtype``): each input/output tensor is bound with the NumPy
  dtype of its TensorRT type (FP16 inputs of ``half=True`` exports get FP16 buffers); types the
  host cannot hold or convert (BF16, FP8, FP4, INT4, E8M0) are refused by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engines.errors import EngineLoadError

# TensorRT ``DataType`` member name -> the NumPy dtype its host buffer has.
_TRT_TO_NUMPY: dict[str, str] = {
    "FLOAT": "float32",
    "HALF": "float16",
    "INT32": "int32",
    "INT64": "int64",
    "INT8": "int8",
    "UINT8": "uint8",
    "BOOL": "bool",
}


def binding_dtype(tensor: str, trt_type: str) -> np.dtype[np.generic]:
    """The NumPy dtype to bind ``tensor`` of TensorRT type ``trt_type`` (a ``DataType`` name)."""
    name = trt_type.rsplit(".", 1)[-1]  # "DataType.HALF" or "HALF"
    if name not in _TRT_TO_NUMPY:
        raise EngineLoadError(
            f"tensor {tensor!r} is {name} in the TensorRT plan; only "
            f"{', '.join(sorted(_TRT_TO_NUMPY))} inputs/outputs can be bound (export the model "
            "with float32 or float16 inputs and outputs)"
        )
    return np.dtype(_TRT_TO_NUMPY[name])


@dataclass(frozen=True)
class ProfileShapes:
    """The (min, opt, max) input shapes of one optimization profile."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def as_tuple(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        return self.min, self.opt, self.max


def image_dims(
    shape: Sequence[int], size: tuple[int, int], *, strict: bool = False
) -> tuple[int, int, int]:
    """(C, H, W) of an NCHW input whose symbolic (-1) H/W take ``size`` (height, width).

    Static H/W are kept; with ``strict`` they must equal ``size`` (the model's input size: any
    other would fail in the first convolution, or letterbox to the wrong size).
    """
    if len(shape) != 4:
        raise EngineLoadError(f"input shape {tuple(shape)} is not NCHW (4 dims)")
    c, h, w = (int(d) for d in shape[1:])
    if c < 0:
        raise EngineLoadError(
            f"input shape {tuple(shape)} has a symbolic channel dimension (only N, H, W may be)"
        )
    for got, want, axis in ((h, size[0], "height"), (w, size[1], "width")):
        if strict and got >= 0 and got != want:
            raise EngineLoadError(
                f"input {axis} is {got} in the model but the input size is "
                f"{size[0]}x{size[1]}: a TensorRT profile pins H/W to one size"
            )
    return c, h if h >= 0 else size[0], w if w >= 0 else size[1]


def profile_shapes(
    shape: Sequence[int], *, min_batch: int, opt_batch: int, max_batch: int, size: tuple[int, int]
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) shapes of an NCHW input: the batch range (a static batch is kept as it
    is), and the model's input size wherever the ONNX left height/width symbolic (-1)."""
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(
            f"batch range must be 1 <= min <= opt <= max: {min_batch}/{opt_batch}/{max_batch}"
        )
    rest = image_dims(shape, size)
    if shape[0] > 0:  # a static batch admits only itself
        min_batch = opt_batch = max_batch = int(shape[0])
    return (min_batch, *rest), (opt_batch, *rest), (max_batch, *rest)


def model_profile(shape: Sequence[int], max_batch: int, size: tuple[int, int]) -> ProfileShapes:
    """The profile the TensorRT build gives a model: batch 1 .. ``max_batch`` with the optimum
    at the max, or the static batch alone; H/W pinned to ``size``."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    image_dims(shape, size, strict=True)
    low, opt, high = profile_shapes(
        shape, min_batch=1, opt_batch=max_batch, max_batch=max_batch, size=size
    )
    return ProfileShapes(low, opt, high)


@dataclass(frozen=True)
class ServingLimits:
    """What the runtime lets callers send a plan, from its input shape and profiles."""

    min_batch: int  # smaller batches are filled up to this with copies of the last image
    max_batch: int  # the scheduler's max batch follows this
    static_batch: int | None  # the plan's own fixed batch, if the input has one
    image: tuple[int | None, int | None, int | None]  # (C, H, W); None where not pinned


def serving_limits(
    engine_shape: Sequence[int],
    profiles: Sequence[tuple[Sequence[int], Sequence[int]]],
    requested_max: int | None,
) -> ServingLimits:
    """Limits of a plan whose input has ``engine_shape`` (-1 = dynamic) and the (min, max)
    shapes of the profiles its contexts use; ``requested_max`` may lower the max, never raise it.
    """
    if len(engine_shape) != 4:
        raise EngineLoadError(f"plan input shape {tuple(engine_shape)} is not NCHW (4 dims)")
    if all(d >= 0 for d in engine_shape) or not profiles:
        if any(d < 0 for d in engine_shape):
            raise EngineLoadError(f"plan input {tuple(engine_shape)} is dynamic but has no profile")
        profiles = [(engine_shape, engine_shape)]
    low = max(int(p[0][0]) for p in profiles)
    high = min(int(p[1][0]) for p in profiles)
    if low > high:
        raise EngineLoadError(f"the plan's profiles share no batch size ({low} > {high})")
    image: list[int | None] = []
    for axis in (1, 2, 3):
        sizes = {(int(p[0][axis]), int(p[1][axis])) for p in profiles}
        pinned = len(sizes) == 1 and len({*next(iter(sizes))}) == 1
        image.append(next(iter(sizes))[0] if pinned else None)
    static = int(engine_shape[0]) if engine_shape[0] >= 0 else None
    top = high if requested_max is None else max(low, min(high, requested_max))
    return ServingLimits(low, top, static, (image[0], image[1], image[2]))
