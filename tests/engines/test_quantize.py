"""Precision transforms on a miniature detector: FP16 conversion, INT8 Q/DQ, the decode head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from engines.build.builder import BuildConfig
from engines.build.fp16 import to_fp16
from engines.build.int8.calibration import CalibrationSet, ImageSet
from engines.build.int8.graph import decode_head
from engines.build.int8.quantize import Int8Options, quantize_int8
from tests.engines.build_fixtures import HEAD_OPS, SIZE, tiny_detector, write_photos


def run(model: onnx.ModelProto | Path, batch: np.ndarray) -> np.ndarray:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"images": batch})[0])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "model.onnx"
    onnx.save(tiny_detector(), str(path))
    return path


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> CalibrationSet:
    folder = write_photos(tmp_path_factory.mktemp("calib"), 8)
    ranges = folder.parent / "ranges.json"
    return CalibrationSet(ImageSet.from_folder(folder), "images", (SIZE, SIZE), 114, ranges)


@pytest.fixture(scope="module")
def batch(calibration: CalibrationSet) -> np.ndarray:
    return np.concatenate([feed["images"] for feed in calibration])


@pytest.mark.parametrize("heads", [1, 2])
def test_decode_head_is_everything_after_the_last_convolutions(heads: int) -> None:
    model = tiny_detector(heads)
    head = decode_head(model)
    by_name = {n.name: n.op_type for n in model.graph.node}
    assert len(head) == 7 * heads + 1  # 7 decode nodes per head, then the heads' concat
    assert {by_name[n] for n in head} == set(HEAD_OPS)
    assert not {"conv1", "leaky1"} & set(head)
    assert all(f"head_conv{h}" not in head for h in range(heads))


def test_fp16_keeps_float32_io_and_the_detections(batch: np.ndarray) -> None:
    model = tiny_detector()
    converted = to_fp16(model, keep_float=decode_head(model))
    assert converted.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert converted.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    halves = [t for t in converted.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert halves, "weights were not converted to float16"
    np.testing.assert_allclose(run(converted, batch), run(model, batch), atol=0.05)


def test_int8_is_qdq_with_the_head_left_float(
    tiny: Path, calibration: CalibrationSet, batch: np.ndarray, tmp_path: Path
) -> None:
    head = decode_head(tiny_detector())
    target = tmp_path / "int8.onnx"
    quantize_int8(tiny, target, calibration, Int8Options(), keep_float=head)
    quantized = onnx.load(str(target))
    ops = [n.op_type for n in quantized.graph.node]
    assert ops.count("QuantizeLinear") >= 2 and ops.count("DequantizeLinear") >= 4
    assert calibration.cache_path.is_file()
    # Nothing the head computes is quantized (the head convolution's raw logits may be).
    head_outputs = {o for n in quantized.graph.node if n.name in head for o in n.output}
    quantized_inputs = {n.input[0] for n in quantized.graph.node if n.op_type == "QuantizeLinear"}
    assert not head_outputs & quantized_inputs
    scores = run(target, batch)[..., 4:]
    assert len(np.unique(scores.round(4))) > 100  # scores keep their float resolution


def test_whole_graph_int8_crushes_scores_into_the_box_scale(
    tiny: Path, calibration: CalibrationSet, batch: np.ndarray, tmp_path: Path
) -> None:
    options = Int8Options(op_types=None)
    whole = CalibrationSet(calibration.images, "images", (SIZE, SIZE), 114, tmp_path / "all.json")
    quantize_int8(tiny, tmp_path / "whole.onnx", whole, options, keep_float=[])
    scores = run(tmp_path / "whole.onnx", batch)[..., 4:]
    # One scale for 0..32 pixel boxes and 0..1 scores: scores fall on a handful of steps.
    assert len(np.unique(scores.round(4))) <= 12


def test_cached_ranges_are_reused_without_reading_images(
    tiny: Path, calibration: CalibrationSet, tmp_path: Path
) -> None:
    quantize_int8(tiny, tmp_path / "a.onnx", calibration, Int8Options(), keep_float=[])

    def no_reading(_: int) -> None:
        raise AssertionError("calibration images read although the ranges are cached")

    calibration.on_feed = no_reading
    try:
        quantize_int8(tiny, tmp_path / "b.onnx", calibration, Int8Options(), keep_float=["conv1"])
    finally:
        calibration.on_feed = None
    names = {n.name for n in onnx.load(str(tmp_path / "b.onnx")).graph.node}
    assert "conv1" in names


def test_only_quantizes_just_the_named_node(tiny: Path, calibration: CalibrationSet) -> None:
    target = calibration.cache_path.parent / "only.onnx"
    quantize_int8(tiny, target, calibration, Int8Options(), keep_float=[], only=["head_conv0"])
    model = onnx.load(str(target))
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    quantized = {name for name, n in convs.items() if set(n.input[:2]) & dequantized}
    assert quantized == {"head_conv0"}  # that one reads Q/DQ input and weight, no other conv does
    assert set(convs["head_conv0"].input[:2]) <= dequantized
    assert convs["conv1"].input[1] == "w1"  # conv1 still reads its float weight


def test_tensorrt_target_gets_symmetric_activations() -> None:
    assert BuildConfig(backend="tensorrt").int8_options().symmetric_activations
    assert not BuildConfig().int8_options().symmetric_activations
    assert BuildConfig(mixed_precision=False).int8_options().op_types is None
    assert "per-channel" in Int8Options().describe()
    with pytest.raises(ValueError, match="max_batch"):
        BuildConfig(max_batch=0)
