"""Per-model settings: model.yaml over the model family's defaults over the global ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engines.build.upcast import is_float16, upcast_to_float32
from engines.errors import ModelFormatError
from engines.model.config import (
    BatchingSection,
    DetectDefaults,
    effective_batching,
    effective_defaults,
)
from engines.sources.repository import model_fallback, read_model_spec

GLOBAL = DetectDefaults(conf=0.25, iou=0.45, max_det=300)
ULTRALYTICS_META = {"author": "Ultralytics", "task": "detect"}


def test_ultralytics_models_default_to_yolo_predict() -> None:
    got = effective_defaults(None, ULTRALYTICS_META, GLOBAL)
    assert (got.conf, got.iou, got.max_det, got.source) == (0.25, 0.7, 300, "ultralytics")
    other = effective_defaults(None, {"author": "someone"}, GLOBAL)
    assert (other.iou, other.source) == (0.45, "settings")


def test_model_yaml_wins_key_by_key() -> None:
    own = DetectDefaults(conf=0.4)
    got = effective_defaults(own, ULTRALYTICS_META, GLOBAL)
    assert (got.conf, got.iou, got.source) == (0.4, 0.7, "model.yaml+ultralytics")


def test_batching_never_exceeds_the_models_own_batch() -> None:
    assert effective_batching(None, 8, 4.0, 1).max_batch == 1
    own = BatchingSection(max_batch=16, max_wait_ms=1)
    got = effective_batching(own, 8, 4.0, 64)
    assert (got.max_batch, got.max_wait_ms) == (16, 1)


def test_a_model_yaml_without_source_is_a_users_onnx(tmp_path: Path) -> None:
    model_dir = tmp_path / "mine"
    model_dir.mkdir()
    (model_dir / "model.yaml").write_text(
        "name: mine\ninput_size: [320, 480]\nbatching: {max_batch: 2}\n"
        "build: {precisions: [fp32], calib_dir: calib}\n"
    )
    spec = read_model_spec(model_dir)
    assert spec is not None and spec.source is None and spec.build is not None
    assert spec.build.resolved(model_dir).calib_dir == model_dir / "calib"
    assert model_fallback(model_dir)["input_size"] == [320, 480]
    (model_dir / "model.yaml").write_text("name: mine\ndefaults: {iuo: 0.5}\n")
    with pytest.raises(ModelFormatError, match="iuo"):
        read_model_spec(model_dir)


def test_upcast_makes_a_float16_graph_float32_exactly() -> None:
    weight = np.random.default_rng(0).normal(size=(2, 3, 1, 1)).astype(np.float16)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["y16"]),
            helper.make_node("Cast", ["y16"], ["y"], to=TensorProto.FLOAT16),
        ],
        "half",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 2, 4, 4])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    wide = upcast_to_float32(model)
    assert is_float16(model) and not is_float16(wide)
    onnx.checker.check_model(wide)
    w32 = numpy_helper.to_array(wide.graph.initializer[0])
    assert w32.dtype == np.float32 and np.array_equal(w32, weight.astype(np.float32))
    assert wide.graph.node[1].attribute[0].i == TensorProto.FLOAT
