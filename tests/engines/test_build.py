"""The engine builder on the real COCO model and real photos."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from engines.artifacts.manifest import Manifest
from engines.artifacts.variants import load_servable_variants, verify_variant
from engines.build.builder import BuildConfig, build_model
from engines.build.int8.calibration import ImageSetError
from engines.errors import ArtifactMismatchError, ModelFormatError
from engines.precision import Precision
from engines.runtime.backends import current_host
from tests.conftest import DEFAULT_MODEL_DIR as MODEL_DIR
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def manifest_of(engines_dir: Path) -> Manifest:
    manifest = Manifest.load(engines_dir / "yolov3-tiny-coco")
    assert manifest is not None
    return manifest


def test_default_build_accepts_fp32_and_int8_and_reports_fp16(built_engines: Path) -> None:
    manifest = manifest_of(built_engines)
    by = {v.precision: v for v in manifest.variants}
    assert set(by) == {Precision.FP32, Precision.FP16, Precision.INT8}
    assert by[Precision.FP32].accepted, by[Precision.FP32].reason
    assert by[Precision.INT8].accepted, by[Precision.INT8].reason
    int8 = by[Precision.INT8]
    assert int8.accuracy is not None and int8.accuracy.map50_95_agreement >= 0.95
    assert int8.accuracy.reference_boxes >= 20  # the agreement rests on real detections
    assert int8.calibration is not None and int8.calibration.image_count >= 32
    reasons = [k.reason for k in int8.kept_float]
    assert any(r.startswith("decode head") for r in reasons)
    # Whatever the search kept in float (a better quantizer may need no fallback at all), it
    # stays within its limit, the result meets the budget, and what it names really is float.
    fallbacks = [k.node for k in int8.kept_float if k.reason.startswith("sensitivity:")]
    assert len(fallbacks) <= BuildConfig().max_fallbacks
    assert int8.accuracy.map50_95_agreement >= int8.accuracy.budget
    graph = onnx.load(str(built_engines / "yolov3-tiny-coco" / "int8.onnx")).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    by_name = {n.name: n for n in graph.node}
    for node in fallbacks:
        assert not set(by_name[node].input) & dequantized, f"{node} kept float yet quantized"
    fp16 = by[Precision.FP16]
    assert fp16.accuracy is not None and fp16.latency_ms  # measured, whatever the verdict
    for v in manifest.variants:
        assert v.artifact_sha256 and v.tool_versions["onnxruntime"]
        assert set(v.latency_ms) == {1, 2, 4, 8}


def test_int8_graph_really_is_quantized(built_engines: Path) -> None:
    model = onnx.load(str(built_engines / "yolov3-tiny-coco" / "int8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 5 and ops.count("DequantizeLinear") >= 10


def test_fp16_graph_is_half_inside_with_float32_io(built_engines: Path) -> None:
    model = onnx.load(str(built_engines / "yolov3-tiny-coco" / "fp16.onnx"))
    io = [*model.graph.input, *model.graph.output]
    assert all(t.type.tensor_type.elem_type == TensorProto.FLOAT for t in io)
    assert any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)


def test_rebuilding_does_no_work(built_engines: Path) -> None:
    folder = built_engines / "yolov3-tiny-coco"
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.onnx")}
    manifest = (folder / "manifest.json").read_bytes()
    build_model(MODEL_DIR, built_engines, BuildConfig(), progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.onnx")} == before
    assert (folder / "manifest.json").read_bytes() == manifest


def test_whole_graph_int8_is_built_measured_and_rejected(tmp_path: Path) -> None:
    config = BuildConfig(precisions=(Precision.INT8,), mixed_precision=False, timing=False)
    manifest = build_model(MODEL_DIR, tmp_path, config, progress=False)
    (variant,) = manifest.variants
    assert variant.kept_float == ()
    assert variant.accuracy is not None and variant.accuracy.map50_95_agreement < 0.5
    assert variant.status == "rejected" and variant.reason.startswith("mAP50-95 agreement")
    servable, refused = load_servable_variants(tmp_path, "yolov3-tiny-coco", "onnxruntime")
    assert servable == [] and "rejected" in refused[Precision.INT8]


def copy_build(built: Path, to: Path) -> Path:
    shutil.copytree(built / "yolov3-tiny-coco", to / "yolov3-tiny-coco")
    return to


def test_tampered_artifact_is_refused(built_engines: Path, tmp_path: Path) -> None:
    engines = copy_build(built_engines, tmp_path)
    artifact = engines / "yolov3-tiny-coco" / "int8.onnx"
    data = bytearray(artifact.read_bytes())
    data[-100] ^= 0xFF
    artifact.write_bytes(bytes(data))
    manifest = manifest_of(engines)
    with pytest.raises(ArtifactMismatchError, match="tampered or corrupt"):
        verify_variant(
            manifest.variant(Precision.INT8),
            artifact.parent,  # type: ignore[arg-type]
            current_host("onnxruntime"),
        )
    servable, refused = load_servable_variants(engines, "yolov3-tiny-coco", "onnxruntime")
    assert {v.record.precision for v in servable} == {Precision.FP32, Precision.FP16}
    assert "sha256" in refused[Precision.INT8]


def test_manifest_from_another_onnxruntime_is_refused(built_engines: Path, tmp_path: Path) -> None:
    engines = copy_build(built_engines, tmp_path)
    manifest = manifest_of(engines)
    for v in manifest.variants:
        v.tool_versions["onnxruntime"] = "1.0.0"
    manifest.save(engines / "yolov3-tiny-coco")
    servable, refused = load_servable_variants(engines, "yolov3-tiny-coco", "onnxruntime")
    assert servable == []
    assert all("built with onnxruntime 1.0.0" in why for why in refused.values())


def test_non_onnx_and_unknown_layout_are_clear_errors(tmp_path: Path) -> None:
    bad = tmp_path / "models" / "junk" / "source"
    bad.mkdir(parents=True)
    (bad / "model.onnx").write_bytes(b"this is not a protobuf" * 50)
    with pytest.raises(ModelFormatError, match="not a readable ONNX model"):
        build_model(bad.parent, tmp_path / "engines", BuildConfig(), progress=False)
    classifier = tmp_path / "models" / "clf" / "source"
    classifier.mkdir(parents=True)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["logits"]),
        ],
        "clf",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.metadata_props.add(key="names", value="['a', 'b', 'c']")
    onnx.save(model, str(classifier / "model.onnx"))
    with pytest.raises(ModelFormatError, match="match no known detection layout"):
        build_model(classifier.parent, tmp_path / "engines", BuildConfig(), progress=False)
    assert not list((tmp_path / "engines").rglob("manifest.json"))


def test_bad_calibration_folders_are_clear_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    config = BuildConfig(precisions=(Precision.INT8,), calib_dir=empty)
    with pytest.raises(ImageSetError, match="is empty"):
        build_model(MODEL_DIR, tmp_path / "engines", config, progress=False)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not an image")
    (junk / "photo.jpg").write_bytes(np.zeros(100, np.uint8).tobytes())
    config = BuildConfig(precisions=(Precision.INT8,), calib_dir=junk)
    with pytest.raises(ImageSetError, match=r"notes\.txt"):
        build_model(MODEL_DIR, tmp_path / "engines", config, progress=False)
    manifest = Manifest.load(tmp_path / "engines" / "yolov3-tiny-coco")
    assert manifest is None or not any(v.accepted for v in manifest.variants)


def test_cli_reports_a_bad_model_file_without_a_traceback(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_text("nope")
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "build", str(junk), "--name", "junk"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path)},
    )
    assert done.returncode == 2
    assert "not a readable ONNX model" in done.stderr and "Traceback" not in done.stderr


def _own_detections_as_labels(photo: Path, to: Path, shift: float) -> Path:
    """A COCO label file whose boxes are FP32's own confident detections (moved by ``shift``)."""
    import json

    import onnxruntime as ort

    from engines.model.info import read_model_info
    from engines.model.layouts import LAYOUTS
    from engines.model.postprocess import postprocess
    from engines.model.preprocess import decode_image, letterbox
    from engines.sources.repository import ensure_model_source

    source = ensure_model_source(MODEL_DIR)
    image = decode_image(photo.read_bytes(), max_pixels=10**8)
    tensor, transform = letterbox(image, (416, 416))
    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    outputs = {"output0": session.run(None, {"images": tensor[np.newaxis]})[0]}
    candidates = LAYOUTS["yolov5"].decode(outputs, 0, 0.25)
    found = postprocess(candidates, transform, iou=0.45, max_det=100)
    assert len(found) >= 3, "too few detections to label with"
    names = read_model_info(source, "yolov3-tiny-coco").class_names
    annotations = [
        {
            "id": k + 1,
            "image_id": 1,
            "category_id": int(c) + 1,
            "bbox": [float(b[0]) + shift, float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
            "area": float((b[2] - b[0]) * (b[3] - b[1])),
            "iscrowd": 0,
        }
        for k, (b, c) in enumerate(zip(found.boxes, found.class_ids, strict=True))
    ]
    height, width = image.shape[:2]
    to.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": photo.name, "width": width, "height": height}],
                "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
                "annotations": annotations,
            }
        )
    )
    return to


def test_build_scores_its_detections_against_the_labels_given(tmp_path: Path) -> None:
    """Labels that are the model's own boxes score (almost) 1, the same boxes moved away 0."""
    from engines.sources.sample_images import sample_image

    val = tmp_path / "val"
    val.mkdir()
    shutil.copy(sample_image("terrain2"), val / "terrain2.png")
    scores = []
    for shift in (0.0, 2000.0):
        labels = _own_detections_as_labels(val / "terrain2.png", tmp_path / "labels.json", shift)
        config = BuildConfig(precisions=(Precision.FP32,), val_dir=val, labels=labels, timing=False)
        engines = tmp_path / f"engines-{shift:.0f}"
        (variant,) = build_model(MODEL_DIR, engines, config, progress=False).variants
        assert variant.accuracy is not None
        scores.append(variant.accuracy.labelled_map50_95)
    # The build also keeps low-confidence boxes, so a perfect label set scores a little under 1.
    assert scores[0] is not None and scores[0] >= 0.9, scores
    assert scores[1] == 0.0, scores


def test_labelled_map_is_one_for_perfect_and_zero_for_wrong_boxes() -> None:
    import json

    from engines.build.accuracy import label_map
    from engines.model.postprocess import Detections
    from engines.sources.registry import fetch
    from engines.sources.sample_images import TERRAIN2_LABELS

    labels = fetch(TERRAIN2_LABELS)
    boxes = np.array([a["bbox"] for a in json.loads(labels.read_text())["annotations"]], np.float32)
    xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
    names = ["person", "bicycle", "car"]
    perfect = Detections(
        xyxy, np.linspace(0.9, 0.5, len(xyxy), dtype=np.float32), np.full(len(xyxy), 2, np.int64)
    )
    assert label_map(labels, ["terrain2.png"], names, [perfect]) == 1.0
    shifted = Detections(xyxy + 300, perfect.scores, perfect.class_ids)
    assert label_map(labels, ["terrain2.png"], names, [shifted]) == 0.0
