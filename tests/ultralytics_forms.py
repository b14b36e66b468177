"""The real Ultralytics exports in tests/fixtures/ultralytics, as models of a repository.

Made by scripts/export_ultralytics_fixtures.py with Ultralytics' own exporter (random weights,
scaled-down model YAMLs); fixtures.json lists each file's family, form, export arguments and
shapes. Builds here use small demo image sets (a test-only choice: the forms, not the
accuracy, are under test).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from engines.artifacts.manifest import Manifest
from engines.build.builder import BuildConfig, build_model
from engines.precision import Precision

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "ultralytics"


def fixture_index() -> dict[str, dict[str, Any]]:
    """Model name (file stem) -> its fixtures.json record, for the files committed here."""
    index = json.loads((FIXTURES / "fixtures.json").read_text())
    return {Path(f["file"]).stem: f for f in index["fixtures"] if (FIXTURES / f["file"]).is_file()}


def is_half(record: dict[str, Any]) -> bool:
    return bool(record["export_kwargs"].get("half"))


def has_symbolic_dims(record: dict[str, Any]) -> bool:
    return any(isinstance(d, str) for d in record["inputs"][0]["shape"])


def add_to_repository(models_dir: Path, name: str) -> Path:
    """``models_dir/NAME/source/model.onnx``: a user's ONNX added without a model.yaml."""
    target = models_dir / name / "source" / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(FIXTURES / f"{name}.onnx", target)
    return target


def build_fixture(models_dir: Path, engines_dir: Path, name: str) -> Manifest:
    """FP32 and INT8 (and FP16 for half exports, whose FP16 variant is their own file)."""
    record = fixture_index()[name.removesuffix("-configured")]
    precisions = [Precision.FP32, Precision.INT8]
    if is_half(record):
        precisions.insert(1, Precision.FP16)
    config = BuildConfig(
        precisions=tuple(precisions),
        max_batch=2,
        calibration_images=4,
        validation_images=3,
        max_fallbacks=0,  # random weights: the sensitivity search would not rescue them
        # Timing is where symbolic dims used to break; elsewhere it only costs test time.
        timing=has_symbolic_dims(record),
    )
    return build_model(models_dir / name, engines_dir, config, progress=False)
