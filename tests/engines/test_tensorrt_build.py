"""The TensorRT build on a host without TensorRT: its INT8 graph obeys TensorRT's rules, it is
judged with fake-quant numerics, and it lives beside the ONNX Runtime build without harming it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

from engines.artifacts.manifest import Manifest
from engines.artifacts.record import VariantRecord
from engines.build.builder import Budgets, BuildConfig, build_model
from engines.build.int8.calibration import CalibrationSet, ImageSet
from engines.build.int8.graph import decode_head
from engines.build.int8.quantize import Int8Options, quantize_int8
from engines.build.int8.tensorrt_recipe import (
    TENSORRT_FP32_OPS,
    TENSORRT_OPSET,
    quantize_for_tensorrt,
)
from engines.build.staging import PREFIX
from engines.precision import Precision
from engines.runtime.onnxruntime import FAKE_QUANT, OnnxRuntimeEngine
from engines.runtime.tensorrt import tensorrt_available
from tests.conftest import MODELS_DIR, Server
from tests.engines.build_fixtures import SIZE, tiny_detector, write_photos
from tests.engines.tensorrt_graph_rules import (
    precision_problems,
    qdq_feeding,
    qdq_problems,
    quantized_convs,
)

MODEL_DIR = MODELS_DIR / "yolov3-tiny-coco"
needs_no_tensorrt = pytest.mark.skipif(
    tensorrt_available(), reason="TensorRT is installed: the build compiles plans instead"
)


def _tiny_int8(tmp_path: Path, recipe: Callable[..., None]) -> tuple[onnx.ModelProto, list[str]]:
    source = tmp_path / "tiny.onnx"
    onnx.save(tiny_detector(heads=2), str(source))
    images = ImageSet.from_folder(write_photos(tmp_path / "calib", 4))
    calibration = CalibrationSet(images, "images", (SIZE, SIZE), 114, tmp_path / "ranges.json")
    head = decode_head(onnx.load(str(source)))
    recipe(source, tmp_path / "int8.onnx", calibration, Int8Options(), keep_float=head)
    return onnx.load(str(tmp_path / "int8.onnx")), head


def test_tensorrt_recipe_obeys_explicit_quantization_rules(tmp_path: Path) -> None:
    model, head = _tiny_int8(tmp_path, quantize_for_tensorrt)
    assert qdq_problems(model) == []
    assert qdq_feeding(model, head) == []  # raw head logits are not rounded to INT8
    assert precision_problems(model, head, TENSORRT_FP32_OPS) == []
    assert sorted(quantized_convs(model)) == ["conv1", "head_conv0", "head_conv1"]
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 19
    assert TENSORRT_OPSET == 19
    engine = OnnxRuntimeEngine(tmp_path / "int8.onnx", Precision.INT8, session_config=FAKE_QUANT)
    try:
        engine.warmup()  # ONNX Runtime runs it under the build's fake-quant numerics
    finally:
        engine.close()


def test_the_rules_catch_the_cpu_recipe(tmp_path: Path) -> None:
    """ONNX Runtime's CPU graph (UINT8 activations, FP32 remainder) fails the same checks."""
    model, head = _tiny_int8(tmp_path, quantize_int8)
    problems = qdq_problems(model)
    assert any("zero point is UINT8" in p for p in problems), problems
    assert precision_problems(model, head, TENSORRT_FP32_OPS) != []  # FP32 remainder


# ---- the real model: a CPU build, then a TensorRT build into the same folder ----------------


@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory: pytest.TempPathFactory, default_model_source: Path) -> Path:
    engines = tmp_path_factory.mktemp("side-by-side")
    cpu = BuildConfig(precisions=(Precision.FP32,), timing=False)
    build_model(MODEL_DIR, engines, cpu, progress=False)
    trt = BuildConfig(precisions=(Precision.INT8,), backend="tensorrt", timing=False)
    build_model(MODEL_DIR, engines, trt, progress=False)
    return engines


def _variant(engines: Path, backend: str, precision: Precision) -> VariantRecord:
    manifest = Manifest.load(engines / "yolov3-tiny-coco")
    assert manifest is not None
    found = [v for v in manifest.variants if (v.backend, v.precision) == (backend, precision)]
    assert len(found) == 1, manifest.variants
    return found[0]


@pytest.mark.slow
@needs_no_tensorrt
def test_tensorrt_int8_is_proven_on_cpu_and_pending_its_plan(
    side_by_side: Path, built_engines: Path
) -> None:
    variant = _variant(side_by_side, "tensorrt", Precision.INT8)
    assert variant.status == "pending" and "GPU host at first start" in variant.reason
    assert variant.artifact == "int8.trt.onnx" and variant.device == "no-gpu"
    assert variant.accuracy is not None and variant.accuracy.map50_95_agreement >= 0.95
    model = onnx.load(str(side_by_side / "yolov3-tiny-coco" / "int8.trt.onnx"))
    head = decode_head(onnx.load(str(MODEL_DIR / "source" / "model.onnx")))
    kept = [k.node for k in variant.kept_float]
    assert qdq_problems(model) == []
    assert qdq_feeding(model, kept) == []
    assert precision_problems(model, head, TENSORRT_FP32_OPS) == []
    # Judged with TensorRT's numerics, fewer convolutions need to stay out of INT8 than the
    # ONNX Runtime CPU build needs with its integer kernels.
    cpu = _variant(built_engines, "onnxruntime", Precision.INT8)
    cpu_model = onnx.load(str(built_engines / "yolov3-tiny-coco" / "int8.onnx"))
    assert any("dequantizes a INT32 tensor" in p for p in qdq_problems(cpu_model))  # its biases
    fallbacks = [k for k in variant.kept_float if k.reason.startswith("sensitivity")]
    cpu_fallbacks = [k for k in cpu.kept_float if k.reason.startswith("sensitivity")]
    assert len(fallbacks) < len(cpu_fallbacks), (fallbacks, cpu_fallbacks)
    assert len(quantized_convs(model)) == 13 - len(fallbacks)


@pytest.mark.slow
def test_a_tensorrt_build_leaves_the_cpu_build_served(
    side_by_side: Path, server_factory: Callable[..., Server], photo: Callable[[str], bytes]
) -> None:
    folder = side_by_side / "yolov3-tiny-coco"
    assert {"fp32.onnx", "int8.trt.onnx"} <= {p.name for p in folder.iterdir()}
    assert _variant(side_by_side, "onnxruntime", Precision.FP32).accepted
    server = server_factory({"DETECT_ENGINES_DIR": str(side_by_side)})
    with server.client() as client:
        model = client.get("/models").json()["models"][0]
        served = {(v["precision"], v["backend"]) for v in model["variants"]}
        assert served == {("fp32", "onnxruntime")}
        assert model["unavailable"]["int8"].startswith("pending:")  # says why, not hidden
        r = client.post("/detect", files={"image": ("bus", photo("bus"))})
    assert r.status_code == 200 and r.json()["precision"] == "fp32", r.text
    assert any(d["label"] == "bus" for d in r.json()["detections"])


@pytest.mark.slow
def test_a_rejected_rebuild_never_removes_an_accepted_variant(
    side_by_side: Path, tmp_path: Path
) -> None:
    from engines.sources.sample_images import sample_image

    engines = tmp_path / "engines"
    shutil.copytree(side_by_side, engines)
    val = tmp_path / "val"
    val.mkdir()
    for name in ("bus", "zidane"):
        shutil.copy(sample_image(name), val / f"{name}.jpg")
    easy = BuildConfig(
        precisions=(Precision.FP16,), val_dir=val, timing=False, budgets=Budgets(fp16=0.5)
    )
    build_model(MODEL_DIR, engines, easy, progress=False)
    accepted = _variant(engines, "onnxruntime", Precision.FP16)
    assert accepted.accepted
    impossible = BuildConfig(
        precisions=(Precision.FP16,), val_dir=val, timing=False, budgets=Budgets(fp16=1.01)
    )
    build_model(MODEL_DIR, engines, impossible, progress=False)
    kept = _variant(engines, "onnxruntime", Precision.FP16)
    assert kept == accepted  # same record, same artifact sha256
    assert kept.artifact is not None
    from engines.sources.registry import sha256_file

    assert sha256_file(engines / "yolov3-tiny-coco" / kept.artifact) == kept.artifact_sha256
    # and the other backends' and precisions' records are untouched
    assert _variant(engines, "tensorrt", Precision.INT8) == _variant(
        side_by_side, "tensorrt", Precision.INT8
    )
    assert not any(p.name.startswith(PREFIX) for p in (engines / "yolov3-tiny-coco").iterdir())
