"""Every committed Ultralytics export form builds: FP32 accepted, INT8 accepted or rejected by
the accuracy budget with its reason recorded; unservable models are refused with the reason."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import onnx
import pytest

from engines.build.builder import BuildConfig, build_model
from engines.errors import ModelFormatError
from engines.precision import Precision
from tests.conftest import REPO
from tests.ultralytics_forms import FIXTURES, add_to_repository, fixture_index, is_half

pytestmark = pytest.mark.slow
NAMES = sorted(fixture_index())
SMALL_SETS = ["--calib-images", "4", "--val-images", "3"]


def test_the_fixtures_cover_every_form() -> None:
    index = fixture_index()
    forms = {r["form"] for r in index.values()}
    assert {"static", "e2e", "nms", "rect", "batch4", "half", "half-fp16io"} <= forms
    assert any("dynamic" in f for f in forms)
    assert {r["family"] for r in index.values()} >= {"yolov5u", "yolov8", "yolo11", "yolo26"}
    size = sum((FIXTURES / r["file"]).stat().st_size for r in index.values())
    assert size < 10 * 1024 * 1024


@pytest.mark.parametrize("name", NAMES)
def test_each_form_builds_fp32_and_int8(
    name: str, ultralytics_repo: tuple[Path, Path, dict[str, Any]]
) -> None:
    record = fixture_index()[name]
    manifest = ultralytics_repo[2][name]
    assert list(manifest.input_size) == list(record["imgsz"])
    by_precision = {v.precision: v for v in manifest.variants}
    assert by_precision[Precision.FP32].accepted
    int8 = by_precision[Precision.INT8]
    # Random weights may miss the budget: then the measured agreement and the reason are there.
    assert int8.accepted or int8.reason.startswith("mAP50-95 agreement")
    assert int8.accuracy is not None and int8.artifact is not None
    if is_half(record):
        fp16 = by_precision[Precision.FP16]
        assert fp16.accuracy is not None and fp16.accuracy.map50_95_agreement >= 0.9


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DETECT_MODELS_DIR": str(cwd / "models"),
        "DETECT_ENGINES_DIR": str(cwd / "engines"),
        "DETECT_CACHE_DIR": str(REPO / ".cache" / "registry"),
        "PYTHONPATH": str(REPO),
    }
    cmd = [sys.executable, "-m", "service.cli", "build", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_cli_build_of_a_dynamic_export_ends_with_a_summary(tmp_path: Path) -> None:
    model = FIXTURES / "yolo26-e2e-dynamic.onnx"
    done = _cli(
        [str(model), "--name", "mine", "--precision", "fp32,int8", *SMALL_SETS, "--max-batch", "2"],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    lines = done.stdout.splitlines()
    rows = {tuple(line.split()[:2]): line for line in lines if line.startswith("onnxruntime ")}
    assert rows[("onnxruntime", "fp32")].split()[2] == "accepted", done.stdout
    int8 = rows[("onnxruntime", "int8")]
    assert "accepted" in int8 or "why: mAP50-95 agreement" in done.stdout


def _edited(tmp_path: Path, name: str, edit: dict[str, str | None]) -> Path:
    model = onnx.load(str(FIXTURES / f"{name}.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    for key, value in edit.items():
        props.pop(key, None)
        if value is not None:
            props[key] = value
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    path = tmp_path / f"{name}-edited.onnx"
    onnx.save(model, str(path))
    return path


def test_an_unservable_task_is_refused_at_build_naming_it(tmp_path: Path) -> None:
    path = _edited(tmp_path, "yolo26-e2e", {"task": "segment"})
    done = _cli([str(path), "--name", "seg", "--precision", "fp32"], tmp_path)
    assert done.returncode == 2
    assert "not servable: task 'segment'" in done.stderr and "Traceback" not in done.stderr


def test_symbolic_size_without_metadata_needs_imgsz(tmp_path: Path) -> None:
    path = _edited(tmp_path, "yolo26-e2e-dynamic", {"imgsz": None})
    models = tmp_path / "models"
    target = models / "nosize" / "source" / "model.onnx"
    target.parent.mkdir(parents=True)
    shutil.copyfile(path, target)
    config = BuildConfig(precisions=(Precision.FP32,), validation_images=3, timing=False)
    with pytest.raises(ModelFormatError, match="--imgsz"):
        build_model(models / "nosize", tmp_path / "engines", config, progress=False)
    sized = [str(path), "--name", "sized", "--precision", "fp32", *SMALL_SETS]
    done = _cli([*sized, "--imgsz", "320,256"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "320x256" in done.stdout
    assert "input_size: [320, 256]" in (models / "sized" / "model.yaml").read_text()


def test_a_static_model_refuses_another_size(tmp_path: Path) -> None:
    add_to_repository(tmp_path / "models", "yolo26-e2e")
    config = BuildConfig(precisions=(Precision.FP32,), input_size=(320, 320), timing=False)
    with pytest.raises(ModelFormatError, match="does not fit the model's static input"):
        build_model(tmp_path / "models" / "yolo26-e2e", tmp_path / "e", config, progress=False)
