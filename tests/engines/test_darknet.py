"""The project's darknet converter against an independent implementation (OpenCV's importer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from engines.model_sources import read_spec
from engines.preprocess import decode_image, letterbox
from engines.sample_images import sample_image
from engines.sources import fetch

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (4.x) is a test dependency")
MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "yolov3-tiny-coco"


@pytest.fixture(scope="module")
def bus_tensor() -> np.ndarray:
    image = decode_image(sample_image("bus").read_bytes(), max_pixels=10**8)
    return letterbox(image, (416, 416), pad_value=127)[0][None]


def test_outputs_match_opencv_darknet_within_1e_3(
    default_model_source: Path, bus_tensor: np.ndarray
) -> None:
    if not hasattr(cv2.dnn, "readNetFromDarknet"):
        pytest.skip(f"OpenCV {cv2.__version__} has no darknet importer (removed in 5.x)")
    files = {
        role: fetch(f.registry_file()) for role, f in read_spec(MODEL_DIR).source.files.items()
    }
    net = cv2.dnn.readNetFromDarknet(str(files["cfg"]), str(files["weights"]))
    net.setInput(bus_tensor.copy())
    heads = net.forward(net.getUnconnectedOutLayersNames())
    # OpenCV orders rows (y, x, anchor) and normalises boxes; ours are (anchor, y, x) in pixels.
    theirs = np.concatenate(
        [
            h.reshape(g, g, 3, 85).transpose(2, 0, 1, 3).reshape(-1, 85)
            for h, g in zip(heads, (13, 26), strict=True)
        ]
    )
    session = ort.InferenceSession(str(default_model_source), providers=["CPUExecutionProvider"])
    ours = session.run(None, {"images": bus_tensor})[0][0].copy()
    ours[:, :4] /= 416
    np.testing.assert_allclose(ours[:, :5], theirs[:, :5], atol=1e-3)
    # OpenCV reports objectness * class probability and zeroes it below its threshold.
    scores = ours[:, 4:5] * ours[:, 5:]
    reported = theirs[:, 5:] > 0
    assert reported.sum() > 0
    np.testing.assert_allclose(scores[reported], theirs[:, 5:][reported], atol=1e-3)


def test_converted_graph_metadata_and_dynamic_batch(default_model_source: Path) -> None:
    model = onnx.load(str(default_model_source), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["layout"] == "yolov5" and meta["imgsz"] == "[416, 416]"
    assert "0: 'person'" in meta["names"] and "79: 'toothbrush'" in meta["names"]
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
    assert scores[:, 0].max() > 0.8  # person
    assert scores[:, 5].max() > 0.4  # bus
