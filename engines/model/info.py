"""What the service needs to know about a detection model, read from the ONNX file itself.

Class names, input size and output layout come from ``metadata_props`` when present (Ultralytics
exports write ``names``, ``imgsz``, ``stride``; our darknet converter writes the same plus
``layout``), else from the model's ``model.yaml`` (passed in as ``fallback``), else are inferred
from tensor shapes with a clear message.
"""

from __future__ import annotations

import ast
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from engines.errors import ModelFormatError
from engines.model.preprocess import DEFAULT_PAD_VALUE, Resize
from engines.runtime.base import TensorInfo

log = logging.getLogger(__name__)

_ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 2: "uint8"}


@dataclass(frozen=True)
class ModelInfo:
    """Static description of a detection model (independent of precision and backend)."""

    name: str
    input_name: str
    input_size: tuple[int, int]  # (height, width) the letterbox targets
    class_names: tuple[str, ...]
    layout: str | None  # None: detect from output shapes at load time
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    dynamic_batch: bool
    pad_value: int = DEFAULT_PAD_VALUE  # letterbox grey level, 0..255
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def resize(self) -> Resize:
        """The letterbox resize the model was fed in training: OpenCV's for Ultralytics exports
        (their ``author`` metadata), so that we answer like ``yolo predict``; else Pillow's."""
        return "opencv" if self.metadata.get("author", "").startswith("Ultralytics") else "pillow"


def _parse_literal(text: str) -> object:
    """Metadata values are JSON or Python literals (Ultralytics writes ``str(dict)``)."""
    try:
        return json.loads(text)
    except ValueError:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError) as exc:
            raise ModelFormatError(f"unparseable metadata value {text[:80]!r}") from exc


def parse_names(text: str) -> tuple[str, ...]:
    """``{0: 'person', ...}`` or ``['person', ...]`` -> names ordered by class id."""
    value = _parse_literal(text)
    if isinstance(value, dict):
        ids = sorted(int(k) for k in value)
        if ids != list(range(len(ids))):
            raise ModelFormatError("class names metadata must cover ids 0..n-1 without gaps")
        by_id = {int(k): str(v) for k, v in value.items()}
        return tuple(by_id[i] for i in ids)
    if isinstance(value, list | tuple):
        return tuple(str(v) for v in value)
    raise ModelFormatError(f"class names metadata has unexpected type {type(value).__name__}")


def _tensor_infos(values: list[onnx.ValueInfoProto]) -> tuple[TensorInfo, ...]:
    infos = []
    for v in values:
        tt = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        infos.append(TensorInfo(v.name, dims, _ONNX_DTYPES.get(tt.elem_type, str(tt.elem_type))))
    return tuple(infos)


def _pair(value: object, what: str) -> tuple[int, int]:
    """``640`` or ``[h, w]`` -> (h, w) of positive ints, else ``ModelFormatError``."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return int(value[0]), int(value[1])
    raise ModelFormatError(f"{what} must be a positive int or [height, width], got {value!r}")


def _input_size(
    meta: Mapping[str, str],
    inp: TensorInfo,
    fallback: Mapping[str, object],
    override: tuple[int, int] | None,
) -> tuple[int, int]:
    """The (height, width) images are letterboxed to.

    Order: an explicit size (``--imgsz``), then ``model.yaml``'s ``input_size``, then the
    exporter's ``imgsz`` metadata, then the input's static dims. A static input admits only
    its own size: any other would fail in the first convolution, so that is refused here, at
    build, with both sizes named.
    """
    static = (inp.shape[2], inp.shape[3])
    chosen: tuple[int, int] | None = None
    if override is not None:
        chosen, what = _pair(list(override), "--imgsz"), "--imgsz"
    elif fallback.get("input_size") is not None:
        chosen, what = _pair(fallback["input_size"], "model.yaml input_size"), "model.yaml"
    elif "imgsz" in meta:
        chosen, what = _pair(_parse_literal(meta["imgsz"]), "metadata imgsz"), "metadata imgsz"
    if chosen is not None:
        for got, fixed, axis in zip(chosen, static, ("height", "width"), strict=True):
            if fixed is not None and got != fixed:
                raise ModelFormatError(
                    f"input size {chosen[0]}x{chosen[1]} from {what} does not fit the model's "
                    f"static input {axis} {fixed} (input shape {inp.shape})"
                )
        return chosen
    if static[0] is not None and static[1] is not None:
        return static[0], static[1]
    raise ModelFormatError(
        f"input {inp.name!r} has symbolic height/width {inp.shape} and no imgsz metadata: give "
        "the size with `detect-serve build ... --imgsz H,W` or input_size in model.yaml"
    )


def read_model_info(
    path: Path,
    name: str,
    fallback: Mapping[str, object] | None = None,
    input_size: tuple[int, int] | None = None,
) -> ModelInfo:
    """Read a model's static description; raise ``ModelFormatError`` if it is not usable ONNX.

    ``fallback`` holds the model's ``model.yaml`` values (``class_names``, ``layout``,
    ``input_size``); ``input_size`` is an explicit size that overrides every other source.
    """
    fallback = fallback or {}
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ... for non-ONNX bytes
        raise ModelFormatError(f"{path} is not a readable ONNX model: {exc}") from exc
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = tuple(i for i in _tensor_infos(list(graph.input)) if i.name not in initializers)
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise ModelFormatError(
            f"{path}: expected one NCHW image input, found {[(i.name, i.shape) for i in inputs]}"
        )
    meta = {p.key: p.value for p in model.metadata_props}
    if "names" in meta:
        names = parse_names(meta["names"])
    elif isinstance(fallback_names := fallback.get("class_names"), list):
        names = tuple(str(n) for n in fallback_names)
    else:
        raise ModelFormatError(
            f"{path}: no class names in metadata_props['names'] or model.yaml 'class_names'"
        )
    layout = meta.get("layout") or fallback.get("layout")
    pad = meta.get("pad_value", "")
    return ModelInfo(
        name=name,
        input_name=inputs[0].name,
        input_size=_input_size(meta, inputs[0], fallback, input_size),
        class_names=names,
        layout=str(layout) if layout else None,
        inputs=inputs,
        outputs=_tensor_infos(list(graph.output)),
        dynamic_batch=inputs[0].shape[0] is None,
        pad_value=int(pad) if pad.isdigit() and int(pad) <= 255 else DEFAULT_PAD_VALUE,
        metadata=meta,
    )
