"""Every Ultralytics export form served through the real server: its detections equal an
independent NumPy decode (tests/reference_decode.py) of the same ONNX's outputs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engines.model.preprocess import decode_image, letterbox
from engines.precision import Precision
from tests.conftest import CONFIGURED, Server
from tests.reference_decode import Found, reference_detections
from tests.ultralytics_forms import fixture_index, has_symbolic_dims, is_half

pytestmark = pytest.mark.slow
NAMES = sorted(fixture_index())  # the committed exports (CONFIGURED is one of them again)
PHOTOS = ("bus", "zidane")  # portrait and landscape: both letterbox axes
ULTRALYTICS = {"conf": 0.25, "iou": 0.7, "max_det": 300}  # yolo predict's defaults


def _reference(artifact: Path, data: bytes, size: tuple[int, int]) -> list[Found]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    image = decode_image(data, max_pixels=10**8)
    tensor, _ = letterbox(image, size, resize="opencv")  # Ultralytics exports: as predict
    batch = int(inp.shape[0]) if isinstance(inp.shape[0], int) else 1
    feed = np.repeat(tensor[None], batch, axis=0)
    if inp.type == "tensor(float16)":
        feed = feed.astype(np.float16)
    output = session.run(None, {inp.name: feed})[0][0]
    return reference_detections(output, size, image.shape[:2], **ULTRALYTICS)


def _served(ultralytics_repo: tuple[Path, Path, dict[str, Any]]) -> list[tuple[str, str]]:
    return [
        (name, v.precision.value)
        for name, manifest in sorted(ultralytics_repo[2].items())
        for v in manifest.variants
        if v.accepted and name != CONFIGURED
    ]


def test_models_lists_every_form_with_its_effective_configuration(
    ultralytics_server: Server, ultralytics_repo: tuple[Path, Path, dict[str, Any]]
) -> None:
    with ultralytics_server.client() as client:
        body = client.get("/models").json()
    assert body["failed"] == {}
    entries = {m["name"]: m for m in body["models"]}
    for name, record in fixture_index().items():
        entry = entries[name]
        assert entry["input_size"] == record["imgsz"]
        assert entry["defaults"] == {**ULTRALYTICS, "source": "ultralytics"}
        own_batch = record["inputs"][0]["shape"][0]
        expected = min(2, own_batch) if isinstance(own_batch, int) else 2
        assert entry["batching"]["max_batch"] == expected
        accepted = {v.precision.value for v in ultralytics_repo[2][name].variants if v.accepted}
        assert {v["precision"] for v in entry["variants"]} == accepted


@pytest.mark.parametrize("photo_name", PHOTOS)
def test_server_detections_equal_an_independent_decode(
    ultralytics_server: Server,
    ultralytics_repo: tuple[Path, Path, dict[str, Any]],
    photo: Callable[[str], bytes],
    photo_name: str,
) -> None:
    _, engines_dir, manifests = ultralytics_repo
    data = photo(photo_name)
    checked = 0
    with ultralytics_server.client() as client:
        for name, precision in _served(ultralytics_repo):
            manifest = manifests[name]
            variant = next(v for v in manifest.variants if v.precision.value == precision)
            assert variant.artifact is not None
            size = (manifest.input_size[0], manifest.input_size[1])
            expected = _reference(engines_dir / name / variant.artifact, data, size)
            response = client.post(
                "/detect",
                params={"model": name, "precision": precision},
                content=data,
                headers={"Content-Type": "image/jpeg"},
            )
            assert response.status_code == 200, response.text
            got = response.json()["detections"]
            where = f"{name}/{precision} on {photo_name}"
            assert len(got) == len(expected), where
            for g, e in zip(got, expected, strict=True):
                assert g["class_id"] == e.class_id, where
                assert g["score"] == pytest.approx(e.score, abs=2e-4), where
                assert g["box"] == pytest.approx(list(e.box), abs=0.15), where
            checked += len(got)
    assert checked > 0  # the forms are compared on real detections, not on empty lists


def test_half_exports_serve_their_own_float16_file(
    ultralytics_server: Server, ultralytics_repo: tuple[Path, Path, dict[str, Any]]
) -> None:
    import onnx

    _, engines_dir, manifests = ultralytics_repo
    fp16 = manifests["yolov8-half-fp16io"].variants
    served = next(v for v in fp16 if v.precision is Precision.FP16)
    assert served.artifact is not None
    graph = onnx.load(str(engines_dir / "yolov8-half-fp16io" / served.artifact)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


PREDICTED = Path(__file__).resolve().parent.parent / "data" / "ultralytics_reference" / "fixtures"
# `yolo predict` pads a dynamic export only to a stride multiple (its rect mode, another input
# per image shape); we letterbox to the full imgsz so that images batch (README). Half exports
# compute in float16, whose last digits depend on the casts and fusions ONNX Runtime's session
# options make on a CPU: near-equal scores then flip NMS decisions on these random-weight
# heads, so they are checked against the independent decode above instead.
STATIC = [
    n
    for n in NAMES
    if not has_symbolic_dims(fixture_index()[n]) and not is_half(fixture_index()[n])
]


def _assert_equal(got: list[dict[str, Any]], expected: list[dict[str, Any]], where: str) -> None:
    # Deliberate difference (README): a box wholly in the letterbox padding clips to zero area;
    # Ultralytics returns it, we drop it.
    expected = [e for e in expected if e["xyxy"][2] > e["xyxy"][0] and e["xyxy"][3] > e["xyxy"][1]]
    assert len(got) == len(expected), where
    for g, e in zip(got, expected, strict=True):
        assert g["class_id"] == e["cls"], where
        # The server rounds scores to 4 decimals and coordinates to 0.1 px.
        assert g["score"] == pytest.approx(e["conf"], abs=1e-4), where
        assert g["box"] == pytest.approx(e["xyxy"], abs=0.06), where


@pytest.mark.parametrize("photo_name", PHOTOS)
def test_static_exports_answer_like_yolo_predict(
    ultralytics_server: Server, photo: Callable[[str], bytes], photo_name: str
) -> None:
    """Ultralytics' own predictor output (scripts/make_reference_predictions.py) on the same
    files and photos: same boxes, scores and classes, with no threshold given."""
    data = photo(photo_name)
    compared = 0
    with ultralytics_server.client() as client:
        for name in STATIC:
            record = fixture_index()[name]
            predicted = json.loads((PREDICTED / f"{name}-{photo_name}.json").read_text())
            assert predicted["model_sha256"] == record["sha256"]
            precision = "fp32"
            response = client.post(
                "/detect",
                params={"model": name, "precision": precision},
                content=data,
                headers={"Content-Type": "image/jpeg"},
            )
            assert response.status_code == 200, response.text
            got = response.json()["detections"]
            where = f"{name}/{precision} on {photo_name}"
            _assert_equal(got, predicted["detections"], where)
            compared += len(got)
    assert compared > 0


def test_model_yaml_settings_override_the_global_ones(
    ultralytics_server: Server, photo: Callable[[str], bytes]
) -> None:
    with ultralytics_server.client() as client:
        entries = {m["name"]: m for m in client.get("/models").json()["models"]}
        response = client.post(
            "/detect",
            params={"model": CONFIGURED},
            content=photo("zidane"),
            headers={"Content-Type": "image/jpeg"},
        )
        overridden = client.post(
            "/detect",
            params={"model": CONFIGURED, "conf": 0.25, "max_det": 300},
            content=photo("zidane"),
            headers={"Content-Type": "image/jpeg"},
        )
    entry = entries[CONFIGURED]
    assert entry["defaults"] == {
        "conf": 0.5,
        "iou": 0.7,
        "max_det": 3,
        "source": "model.yaml+ultralytics",
    }
    assert entry["batching"] == {"max_batch": 1, "max_wait_ms": 1.0}
    found = response.json()["detections"]
    assert len(found) <= 3 and all(d["score"] >= 0.5 for d in found)
    # A request's own thresholds still win over the model's defaults.
    assert len(overridden.json()["detections"]) > len(found)
