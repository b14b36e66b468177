"""The v2 models a served model appears as, shared by KServe v2 over HTTP and gRPC.

- ``NAME`` (the ``auto`` policy, or request parameter ``precision``) and ``NAME.fp32|fp16|int8``
  take the model's preprocessed NCHW float32 tensor and return the raw engine outputs.
- ``NAME.detect`` takes encoded images (input ``IMAGE``, BYTES, one image per batch row) and
  returns detections in original-image pixels: ``boxes`` [B, K, 4] (x1, y1, x2, y2), ``scores``
  [B, K], ``classes`` [B, K], ``labels`` [B, K] (BYTES) and ``count`` [B]; rows are padded with
  zeros past their ``count``. Parameters ``conf``, ``iou``, ``max_det``, ``classes`` ("0,2" or
  "person,car") and ``precision`` mean what they mean on ``/detect``. It runs the ``/detect``
  pipeline and the same batcher, so the detections are those ``/detect`` returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from engines.model.pipeline import DetectOptions
from engines.precision import Precision
from service.config import Settings
from service.errors import BadRequest, ModelNotFound
from service.flow import Reply, Route
from service.registry import ModelRegistry, ServedModel, ServedVariant
from service.scheduler import ItemResult

IMAGE_SUFFIX = "detect"
IMAGE_INPUT = "IMAGE"
PRECISIONS = {p.value for p in Precision}
# Triton's platform names for what runs the variant.
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
IMAGE_OUTPUTS: tuple[tuple[str, str, list[int]], ...] = (
    ("boxes", "FP32", [-1, -1, 4]),
    ("scores", "FP32", [-1, -1]),
    ("classes", "INT32", [-1, -1]),
    ("labels", "BYTES", [-1, -1]),
    ("count", "INT32", [-1]),
)


@dataclass(frozen=True)
class V2Target:
    """What a v2 model name refers to."""

    name: str
    model: ServedModel
    precision: str | None  # None: the auto policy (or the request's ``precision`` parameter)
    image: bool  # the image-in, detections-out model

    def variant(self) -> ServedVariant:
        """The variant that answers now (auto: the policy's current choice)."""
        if self.precision is not None:
            return self.model.variants[Precision(self.precision)]
        return self.model.variants[self.model.selector.auto_choice]


def resolve_v2(registry: ModelRegistry, name: str, version: str | None = None) -> V2Target:
    """``NAME``, ``NAME.PRECISION`` or ``NAME.detect``; 404 for anything not served, including
    a precision that was never built for the model, and a version that is not the served one.
    The current request holds the served version until it is answered (``service.leases``)."""
    base, _, suffix = name.rpartition(".")
    if suffix in PRECISIONS or suffix == IMAGE_SUFFIX:
        model = registry.get(base)
        if model is not None:
            _check_version(name, model, version)
            if suffix == IMAGE_SUFFIX:
                return V2Target(name, model, None, image=True)
            if Precision(suffix) not in model.variants:
                why = model.unavailable.get(Precision(suffix), "it was not built")
                raise ModelNotFound(f"v2 model {name[:80]!r} is not served: {why}")
            return V2Target(name, model, suffix, image=False)
    model = registry.get(name)
    if model is not None:
        _check_version(name, model, version)
        return V2Target(name, model, None, image=False)
    if name in registry.unloaded or base in registry.unloaded:
        raise ModelNotFound(
            f"v2 model {name[:80]!r} is unloaded; POST /v2/repository/models/"
            f"{(base if base in registry.unloaded else name)[:64]}/load serves it again"
        )
    raise ModelNotFound(f"unknown v2 model {name[:64]!r}; see GET /models")


def _check_version(name: str, model: ServedModel, version: str | None) -> None:
    if version and version != str(model.version):
        raise ModelNotFound(
            f"version {version[:16]!r} of v2 model {name[:80]!r} is not served; "
            f"it serves version {model.version}"
        )


def platform(variant: ServedVariant) -> str:
    return PLATFORMS.get(variant.engine.backend, variant.engine.backend)


def precision_of(model: ServedModel, variant: ServedVariant) -> str:
    return next(p.value for p, v in model.variants.items() if v is variant)


def is_ready(target: V2Target) -> bool:
    if target.precision is not None:
        return target.variant().ready
    return any(v.ready for v in target.model.variants.values())


def _dims(shape: tuple[int | None, ...]) -> list[int]:
    return [-1 if d is None else d for d in shape]


def metadata(target: V2Target) -> dict[str, Any]:
    """The v2 model metadata object (HTTP body; gRPC ModelMetadataResponse fields)."""
    info = target.model.info
    if target.image:
        inputs = [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]}]
        outputs = [{"name": n, "datatype": t, "shape": s} for n, t, s in IMAGE_OUTPUTS]
        # Triton's name for a model that chains pre-processing, an engine and post-processing.
        kind = "ensemble"
    else:
        inputs = [
            {"name": t.name, "datatype": "FP32", "shape": _dims(t.shape)} for t in info.inputs
        ]
        outputs = [
            {"name": t.name, "datatype": "FP32", "shape": _dims(t.shape)} for t in info.outputs
        ]
        kind = platform(target.variant())
    return {
        "name": target.name,
        "versions": [str(target.model.version)],
        "platform": kind,
        "parameters": {
            "precision": target.precision or "auto",
            "layout": target.model.pipeline.layout.name,
        },
        "inputs": inputs,
        "outputs": outputs,
    }


def detect_options(
    model: ServedModel, parameters: dict[str, Any], settings: Settings
) -> DetectOptions:
    """The image model's request parameters -> the ``/detect`` options, checked the same way."""

    def number(key: str, default: float, low: float, high: float) -> float:
        value = parameters.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise BadRequest(f"parameter {key!r} must be a number")
        try:
            number = float(value)
        except ValueError:
            raise BadRequest(f"parameter {key!r} must be a number") from None
        if not low <= number <= high:  # also refuses NaN
            raise BadRequest(f"parameter {key!r}={number} is outside [{low}, {high}]")
        return number

    conf = number("conf", 0.25, 0.0, 1.0)
    iou = number("iou", 0.45, 0.0, 1.0)
    max_det = number("max_det", 300, 1, settings.max_detections)
    if max_det != int(max_det):
        raise BadRequest("parameter 'max_det' must be an integer")
    classes = parameters.get("classes")
    try:
        class_ids = model.pipeline.parse_classes(None if classes is None else str(classes))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return DetectOptions(conf, iou, int(max_det), class_ids)


def image_blobs(array: np.ndarray, max_images: int) -> list[bytes]:
    """The ``IMAGE`` input ([B] or [B, 1] BYTES) -> one encoded image per row."""
    if (
        array.dtype != object
        or array.ndim not in (1, 2)
        or (array.ndim == 2 and array.shape[1] != 1)
    ):
        raise BadRequest(f"input {IMAGE_INPUT!r} must be BYTES of shape [B] or [B, 1]")
    blobs = [bytes(e) for e in array.ravel()]
    if not 1 <= len(blobs) <= max_images:
        raise BadRequest(f"{len(blobs)} images in one request; allowed 1..{max_images}")
    for i, blob in enumerate(blobs):
        if not blob:
            raise BadRequest(f"image {i} is empty")
    return blobs


def checked_batch(model: ServedModel, arrays: dict[str, np.ndarray], max_images: int) -> np.ndarray:
    """The request's NCHW batch for the model's one input; a 400 unless its shape fits."""
    expected = model.info.inputs[0]
    batch = arrays.get(expected.name)
    want = tuple(expected.shape[1:])
    if batch is None or batch.dtype == object or batch.ndim != 4 or batch.shape[1:] != want:
        raise BadRequest(
            f"expected input {expected.name!r} of shape [-1, {', '.join(map(str, want))}]"
        )
    if not 1 <= batch.shape[0] <= max_images:
        raise BadRequest(f"batch of {batch.shape[0]}; allowed 1..{max_images}")
    return batch


def gather_rows(rows: dict[int, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-row engine outputs (by row index) -> one array per output, rows in order."""
    ordered = [rows[i] for i in range(len(rows))]
    return {n: np.concatenate([r[n] for r in ordered]) for n in ordered[0]}


class TensorRows(Route[Reply]):
    """Preprocessed NCHW tensors in (one batcher item per row), raw engine outputs gathered per
    row; each protocol (v2 HTTP, gRPC) shapes the reply."""

    def __init__(self, model: ServedModel, arrays: dict[str, np.ndarray], max_images: int) -> None:
        self._model = model
        self._arrays = arrays
        self._max_images = max_images
        self._batch = np.empty((0,), np.float32)
        self._rows: dict[int, dict[str, np.ndarray]] = {}
        self.answered_by: ServedVariant | None = None

    async def read(self, variant: ServedVariant) -> int:
        self.answered_by = variant
        self._batch = checked_batch(self._model, self._arrays, self._max_images)
        return int(self._batch.shape[0])

    async def prepare(self, variant: ServedVariant, index: int) -> np.ndarray:
        row: np.ndarray = self._batch[index].astype(np.float32, copy=False)
        return row

    async def finish(self, variant: ServedVariant, index: int, result: ItemResult) -> None:
        self._rows[index] = result.outputs

    def outputs(self) -> dict[str, np.ndarray]:
        """The engine outputs of every row, in request order."""
        return gather_rows(self._rows)


class TensorRoute(TensorRows[dict[str, np.ndarray]]):
    """Raw engine outputs out, as arrays (the gRPC endpoint encodes them itself)."""

    async def respond(self, variant: ServedVariant) -> dict[str, np.ndarray]:
        return self.outputs()
