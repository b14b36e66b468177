"""What the build checks before any work: is this a model the service can serve?

A model the service cannot serve is refused here with what is unsupported named, not later
with a backend's stack trace. And a float16 export gets its exact float32 twin, which the FP32
variant, the reference and the INT8 calibration are made from.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from engines.build.upcast import is_float16, upcast_to_float32
from engines.errors import ModelFormatError
from engines.model.info import ModelInfo

_INPUT_DTYPES = ("float32", "float16")
# Ultralytics writes its task into the metadata; only boxes are served.
_SERVED_TASKS = ("detect",)


def check_servable(info: ModelInfo) -> None:
    """Raise ``ModelFormatError`` naming what the service cannot serve about this model."""
    problems = []
    task = info.metadata.get("task")
    if task is not None and task not in _SERVED_TASKS:
        problems.append(
            f"task {task!r} (only 'detect' models are served: boxes, not masks, "
            "keypoints, rotated boxes or class labels)"
        )
    image = info.inputs[0]
    if image.shape[1] not in (3, None):
        problems.append(f"{image.shape[1]}-channel input (images are served as 3-channel RGB)")
    if image.dtype not in _INPUT_DTYPES:
        problems.append(f"{image.dtype} input (the letterboxed 0..1 image is float32 or float16)")
    if problems:
        raise ModelFormatError(f"{info.name}: not servable: {'; '.join(problems)}")


def float32_source(source: Path, out_dir: Path) -> Path:
    """``source`` itself, or for a float16 model its float32 upcast written to ``out_dir``."""
    model = onnx.load(str(source))
    if not is_float16(model):
        return source
    target = out_dir / "source-fp32.onnx"
    try:
        onnx.save(upcast_to_float32(model), str(target))
    except ValueError as exc:
        raise ModelFormatError(f"{source}: float16 model cannot be upcast: {exc}") from exc
    return target
