"""Every Ultralytics export form on the TensorRT path, without TensorRT: the profile each plan
gets, the batch the scheduler may send, the dtypes tensors are bound with, the refusals, and the
INT8 graph the TensorRT parser would be handed. The GPU half is tests/engines/test_tensorrt_gpu.py.

Expected values come from tests/fixtures/ultralytics/fixtures.json (the exporter's record of
each file), not from the code under test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engines.build.int8.calibration import CalibrationSet, ImageSet
from engines.build.int8.graph import decode_head
from engines.build.int8.quantize import Int8Options
from engines.build.int8.tensorrt_recipe import TENSORRT_OPSET, quantize_for_tensorrt
from engines.build.tensorrt_support import plan_request, tensorrt_problems
from engines.build.upcast import is_float16, upcast_to_float32
from engines.errors import CompilerUnavailableError, EngineLoadError, ModelFormatError
from engines.runtime.base import fill_batch
from engines.runtime.tensorrt import BACKEND, tensorrt_available
from engines.runtime.tensorrt_shapes import binding_dtype, serving_limits
from tests.engines.build_fixtures import write_photos
from tests.engines.tensorrt_graph_rules import qdq_problems
from tests.ultralytics_forms import FIXTURES, fixture_index

FORMS = fixture_index()
MAX_BATCH = 8  # the build's max batch in these tests (a static batch overrides it)


def _size(record: dict[str, Any]) -> tuple[int, int]:
    return int(record["imgsz"][0]), int(record["imgsz"][1])


def _own_batch(record: dict[str, Any]) -> int | None:
    batch = record["inputs"][0]["shape"][0]
    return batch if isinstance(batch, int) else None


@pytest.mark.parametrize("name", sorted(FORMS))
def test_each_form_gets_a_profile_pinned_to_its_input_size(name: str) -> None:
    record = FORMS[name]
    request = plan_request(FIXTURES / record["file"], MAX_BATCH, _size(record))
    h, w = _size(record)
    own = _own_batch(record)
    low, opt, high = (1, MAX_BATCH, MAX_BATCH) if own is None else (own, own, own)
    assert request.profile.as_tuple() == ((low, 3, h, w), (opt, 3, h, w), (high, 3, h, w))
    want_dtype = "float16" if record["inputs"][0]["dtype"] == "float16" else "float32"
    assert request.input_dtype == want_dtype
    assert request.input_name == record["inputs"][0]["name"]


@pytest.mark.parametrize("name", sorted(FORMS))
def test_the_scheduler_batch_follows_the_plan(name: str) -> None:
    """The runtime's limits from the shapes a plan of this form reports: a static batch is the
    most the scheduler sends, smaller batches are filled up to it; H/W are known."""
    record = FORMS[name]
    request = plan_request(FIXTURES / record["file"], MAX_BATCH, _size(record))
    dynamic = any(d < 0 for d in request.onnx_shape)
    profiles = [(request.profile.min, request.profile.max)] * 2 if dynamic else []
    own = _own_batch(record)
    for asked, want_max in ((None, own or MAX_BATCH), (2, own or 2)):
        limits = serving_limits(request.onnx_shape, profiles, asked)
        assert limits.max_batch == want_max
        assert limits.min_batch == (own or 1)
        assert limits.static_batch == own
        assert limits.image == (3, *_size(record))


def test_limits_of_plans_made_elsewhere() -> None:
    """A plan with a H/W range (not built here) leaves H/W unpinned; a dynamic plan without
    profiles, or whose profiles share no batch, is refused."""
    ranged = [((1, 3, 320, 320), (8, 3, 640, 640))]
    limits = serving_limits((-1, 3, -1, -1), ranged, 4)
    assert (limits.min_batch, limits.max_batch, limits.image) == (1, 4, (3, None, None))
    with pytest.raises(EngineLoadError, match="no profile"):
        serving_limits((-1, 3, 64, 64), [], None)
    apart = [((1, 3, 64, 64), (2, 3, 64, 64)), ((4, 3, 64, 64), (8, 3, 64, 64))]
    with pytest.raises(EngineLoadError, match="share no batch"):
        serving_limits((-1, 3, 64, 64), apart, None)


def test_binding_dtypes_follow_the_plan_and_refuse_what_the_host_cannot_hold() -> None:
    assert binding_dtype("images", "FLOAT") == np.float32
    assert binding_dtype("images", "DataType.HALF") == np.float16
    assert binding_dtype("classes", "INT64") == np.int64
    assert binding_dtype("mask", "BOOL") == np.bool_
    for unsupported in ("BF16", "FP8", "FP4", "INT4"):
        message = f"'output0' is {unsupported} in the TensorRT plan"
        with pytest.raises(EngineLoadError, match=message):
            binding_dtype("output0", unsupported)


def test_small_batches_are_filled_with_the_last_image() -> None:
    batch = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    filled = fill_batch(batch, 4)
    assert filled.shape[0] == 4
    assert all(np.array_equal(filled[i], batch[1]) for i in (1, 2, 3))
    assert fill_batch(batch, 1) is batch


def _model(path: Path, nodes: list[onnx.NodeProto], **kwargs: Any) -> Path:
    """A small ONNX with one NCHW image input ``images`` and the given nodes."""
    inputs = kwargs.get("inputs") or [
        helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32])
    ]
    outputs = kwargs.get("outputs") or [
        helper.make_tensor_value_info("output0", TensorProto.FLOAT, None)
    ]
    graph = helper.make_graph(nodes, "m", inputs, outputs, kwargs.get("inits", []))
    opset = kwargs.get("opset", 17)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _relu() -> list[onnx.NodeProto]:
    return [helper.make_node("Relu", ["images"], ["output0"])]


REFUSALS: dict[str, tuple[dict[str, Any], str]] = {
    "unsupported-op": (
        {"nodes": [helper.make_node("Unique", ["images"], ["output0"])]},
        r"does not support: \['Unique'\]",
    ),
    "two-inputs": (
        {
            "inputs": [
                helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32]),
                helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1]),
            ]
        },
        "2 graph inputs",
    ),
    "double-output": (
        {
            "nodes": [helper.make_node("Cast", ["images"], ["output0"], to=TensorProto.DOUBLE)],
            "outputs": [helper.make_tensor_value_info("output0", TensorProto.DOUBLE, None)],
        },
        "'output0' is float64",
    ),
    "uint8-image": (
        {"inputs": [helper.make_tensor_value_info("images", TensorProto.UINT8, [1, 3, 32, 32])]},
        "is UINT8",
    ),
    "old-opset": ({"opset": 8}, "opset 8"),
    "unsorted-topk": (
        {
            "nodes": [
                helper.make_node("TopK", ["images", "k"], ["output0", "idx"], sorted=0),
            ],
            "inits": [numpy_helper.from_array(np.array([5], np.int64), "k")],
        },
        "sorted=0",
    ),
    "static-size-mismatch": (
        {"inputs": [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 48, 32])]},
        "input height is 48 in the model but the input size is 32x32",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_what_tensorrt_cannot_take_is_refused_at_build_by_name(tmp_path: Path, case: str) -> None:
    """Refused by the TensorRT backend's compile, before TensorRT (so also on this host), with
    a ModelFormatError the build records as the variant's reason, never a backend trace."""
    kwargs, message = REFUSALS[case]
    path = _model(tmp_path / "m.trt.onnx", kwargs.pop("nodes", _relu()), **kwargs)
    with pytest.raises(ModelFormatError, match=message) as caught:
        BACKEND.compile(path, tmp_path, 8, (32, 32))
    assert str(caught.value).startswith("TensorRT cannot build m.trt.onnx: ")


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed: compile builds a plan")
def test_a_supported_graph_is_left_pending_without_tensorrt(tmp_path: Path) -> None:
    path = _model(tmp_path / "fp32.trt.onnx", _relu())
    with pytest.raises(CompilerUnavailableError, match="TensorRT is not installed here"):
        BACKEND.compile(path, tmp_path, 8, (32, 32))


@pytest.fixture(scope="module")
def calibration_photos(tmp_path_factory: pytest.TempPathFactory) -> ImageSet:
    return ImageSet.from_folder(write_photos(tmp_path_factory.mktemp("calib"), 2))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FORMS))
def test_the_int8_graph_handed_to_the_parser_passes_its_checks(
    tmp_path: Path, calibration_photos: ImageSet, name: str
) -> None:
    """The TensorRT INT8 recipe on each form's float32 source (a half export's upcast, as the
    build makes it): a valid ONNX at TensorRT's opset, nothing TensorRT refuses, Q/DQ as its
    explicit quantization wants, float32 inputs/outputs, and the same plan profile."""
    record = FORMS[name]
    model = onnx.load(str(FIXTURES / record["file"]))
    source = tmp_path / "source.onnx"
    onnx.save(upcast_to_float32(model) if is_float16(model) else model, str(source))
    own = _own_batch(record) or 1
    calibration = CalibrationSet(
        calibration_photos,
        record["inputs"][0]["name"],
        _size(record),
        114,
        tmp_path / "ranges.json",
        batch=own,
        resize="opencv",
    )
    head = decode_head(onnx.load(str(source)))
    target = tmp_path / "int8.trt.onnx"
    quantize_for_tensorrt(source, target, calibration, Int8Options(), keep_float=head)
    int8 = onnx.load(str(target))
    onnx.checker.check_model(int8, full_check=True)
    assert max(o.version for o in int8.opset_import if o.domain in ("", "ai.onnx")) == 19
    assert TENSORRT_OPSET == 19
    assert tensorrt_problems(int8) == []
    assert qdq_problems(int8) == []
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node), "nothing was quantized"
    floats = [v.type.tensor_type.elem_type for v in [*int8.graph.input, *int8.graph.output]]
    assert set(floats) == {TensorProto.FLOAT}
    want = plan_request(FIXTURES / record["file"], MAX_BATCH, _size(record)).profile
    assert plan_request(target, MAX_BATCH, _size(record)).profile == want
