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
from engines.model.preprocess import DEFAULT_PAD_VALUE
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


def _input_size(
    meta: Mapping[str, str], inp: TensorInfo, fallback: Mapping[str, object]
) -> tuple[int, int]:
    if "imgsz" in meta:
        value = _parse_literal(meta["imgsz"])
        if isinstance(value, int):
            return value, value
        if isinstance(value, list | tuple) and len(value) == 2:
            return int(value[0]), int(value[1])
    h, w = inp.shape[2], inp.shape[3]
    if h is not None and w is not None:
        return h, w
    size = fallback.get("input_size")
    if isinstance(size, list | tuple) and len(size) == 2:
        return int(size[0]), int(size[1])
    log.warning("input size unknown for a dynamic-shape model without metadata; using 640x640")
    return 640, 640


def read_model_info(
    path: Path, name: str, fallback: Mapping[str, object] | None = None
) -> ModelInfo:
    """Read a model's static description; raise ``ModelFormatError`` if it is not usable ONNX."""
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
        input_size=_input_size(meta, inputs[0], fallback),
        class_names=names,
        layout=str(layout) if layout else None,
        inputs=inputs,
        outputs=_tensor_infos(list(graph.output)),
        dynamic_batch=inputs[0].shape[0] is None,
        pad_value=int(pad) if pad.isdigit() and int(pad) <= 255 else DEFAULT_PAD_VALUE,
        metadata=meta,
    )
