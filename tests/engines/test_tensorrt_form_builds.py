"""Every Ultralytics export form built with ``--backend tensorrt``.

Without TensorRT (CI, this repository's CPU hosts) each form's TensorRT-ready graphs are made,
judged with TensorRT's numerics and left ``pending`` their plan, never failed. On a GPU host
(``gpu`` tests) each form compiles to a plan, the plan reports the batch, dtypes and outputs of
its export, and the real server answers ``POST /detect`` from it like ONNX Runtime answers
from the same export.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engines.artifacts.manifest import Manifest
from engines.build.builder import BuildConfig, build_model
from engines.model.preprocess import decode_image, letterbox
from engines.precision import Precision
from engines.runtime.base import EngineOptions
from engines.runtime.tensorrt import BACKEND, tensorrt_available
from tests.conftest import Server
from tests.reference_decode import Found, reference_detections
from tests.ultralytics_forms import FIXTURES, add_to_repository, fixture_index, is_half

FORMS = fixture_index()
MAX_BATCH = 2
ULTRALYTICS = {"conf": 0.25, "iou": 0.7, "max_det": 300}  # yolo predict's defaults


def build_for_tensorrt(models_dir: Path, engines_dir: Path, name: str) -> Manifest:
    record = FORMS[name]
    precisions = [Precision.FP32, Precision.INT8]
    if is_half(record):
        precisions.insert(1, Precision.FP16)
    add_to_repository(models_dir, name)
    config = BuildConfig(
        backend="tensorrt",
        precisions=tuple(precisions),
        max_batch=MAX_BATCH,
        calibration_images=4,
        validation_images=3,
        max_fallbacks=0,  # random weights: the sensitivity search would not rescue them
        timing=False,  # the forms, not the speed, are under test
    )
    return build_model(models_dir / name, engines_dir, config, progress=False)


def _own_batch(record: dict[str, Any]) -> int | None:
    batch = record["inputs"][0]["shape"][0]
    return batch if isinstance(batch, int) else None


@pytest.mark.slow
@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed: plans are compiled")
@pytest.mark.parametrize("name", sorted(FORMS))
def test_every_form_is_made_for_tensorrt_and_waits_for_its_plan(tmp_path: Path, name: str) -> None:
    manifest = build_for_tensorrt(tmp_path / "models", tmp_path / "engines", name)
    variants = {v.precision: v for v in manifest.variants if v.backend == "tensorrt"}
    fp32 = variants[Precision.FP32]
    assert fp32.status == "pending", f"{fp32.status}: {fp32.reason}"
    assert "TensorRT is not installed here" in fp32.reason
    assert fp32.artifact == "fp32.trt.onnx"
    for variant in variants.values():
        # Pending its plan, or over its budget on random weights: never a failed build.
        assert "build failed" not in variant.reason, variant.reason
        assert variant.status in ("pending", "rejected"), variant.status


# ---- GPU hosts: plans built and served ------------------------------------------------------


@pytest.fixture(scope="module")
def tensorrt_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("tensorrt-forms")
    models_dir, engines_dir = root / "models", root / "engines"
    manifests = {name: build_for_tensorrt(models_dir, engines_dir, name) for name in FORMS}
    return models_dir, engines_dir, manifests


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FORMS))
def test_every_form_compiles_to_a_plan_with_its_own_batch_and_tensors(
    tensorrt_repo: tuple[Path, Path, dict[str, Any]], name: str
) -> None:
    _, engines_dir, manifests = tensorrt_repo
    record = FORMS[name]
    variants = {v.precision: v for v in manifests[name].variants if v.backend == "tensorrt"}
    fp32 = variants[Precision.FP32]
    assert fp32.accepted, f"{fp32.status}: {fp32.reason}"
    assert fp32.artifact == "fp32.plan"
    for variant in variants.values():
        assert "build failed" not in variant.reason, variant.reason
    for variant in (v for v in variants.values() if v.accepted):
        assert variant.artifact is not None
        engine = BACKEND.open(
            engines_dir / name / variant.artifact, variant.precision, EngineOptions(MAX_BATCH)
        )
        try:
            own = _own_batch(record)
            assert engine.max_batch == (own or MAX_BATCH)  # the scheduler's max batch
            h, w = record["imgsz"]
            assert engine.inputs[0].shape[1:] == (3, h, w)
            # FP16 tensors only where the served file is the half export itself.
            half_io = (
                variant.precision is Precision.FP16 and record["inputs"][0]["dtype"] != "float"
            )
            assert engine.inputs[0].dtype == ("float16" if half_io else "float32")
            outputs = engine.infer(np.zeros((1, 3, h, w), np.float32))
            assert list(outputs) == [o["name"] for o in record["outputs"]]
            for spec in record["outputs"]:
                got = outputs[spec["name"]].shape
                assert got[0] == 1 and list(got[1:2]) == spec["shape"][1:2], (spec, got)
        finally:
            engine.close()


def _onnx_reference(source: Path, data: bytes, size: tuple[int, int]) -> list[Found]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    image = decode_image(data, max_pixels=10**8)
    tensor, _ = letterbox(image, size, resize="opencv")
    batch = int(inp.shape[0]) if isinstance(inp.shape[0], int) else 1
    feed = np.repeat(tensor[None], batch, axis=0)
    if inp.type == "tensor(float16)":
        feed = feed.astype(np.float16)
    output = session.run(None, {inp.name: feed})[0][0]
    return reference_detections(output, size, image.shape[:2], **ULTRALYTICS)


def _iou(a: list[float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@pytest.mark.gpu
@pytest.mark.slow
def test_the_server_answers_every_form_from_its_plan_like_onnx_runtime(
    server_factory: Callable[..., Server],
    tensorrt_repo: tuple[Path, Path, dict[str, Any]],
    photo: Callable[[str], bytes],
) -> None:
    """FP32 plans (TF32 and TensorRT's own kernels): each clear ONNX Runtime detection of the
    export has a served one of the same class on the same box."""
    models_dir, engines_dir, manifests = tensorrt_repo
    names = sorted(manifests)
    server = server_factory(
        {
            "DETECT_BACKEND": "tensorrt",
            "DETECT_MODELS_DIR": str(models_dir),
            "DETECT_ENGINES_DIR": str(engines_dir),
            "DETECT_MODELS": json.dumps(names),
            "DETECT_DEFAULT_MODEL": names[0],
            "DETECT_MAX_BATCH": str(MAX_BATCH),
        }
    )
    data = photo("bus")
    matched = 0
    with server.client() as client:
        for name in names:
            size = (manifests[name].input_size[0], manifests[name].input_size[1])
            expected = _onnx_reference(FIXTURES / FORMS[name]["file"], data, size)
            response = client.post(
                "/detect",
                params={"model": name, "precision": "fp32"},
                content=data,
                headers={"Content-Type": "image/jpeg"},
            )
            assert response.status_code == 200, f"{name}: {response.text}"
            got = response.json()["detections"]
            for e in (e for e in expected if e.score >= 0.4):
                same = [g for g in got if g["class_id"] == e.class_id]
                best = max((_iou(g["box"], e.box) for g in same), default=0.0)
                assert best >= 0.9, f"{name}: {e} has no served match (best IoU {best:.2f})"
                matched += 1
    assert matched > 0
