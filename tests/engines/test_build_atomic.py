"""An interrupted build leaves no file a later run (or the server) could take for a result."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engines.artifacts.manifest import Manifest
from engines.build import builder
from engines.build.builder import BuildConfig, build_model
from engines.build.merge import LOCK_FILE
from engines.build.staging import PREFIX
from engines.precision import Precision
from tests.conftest import DEFAULT_MODEL, DEFAULT_MODEL_DIR

pytestmark = pytest.mark.slow
FP32_ONLY = BuildConfig(precisions=(Precision.FP32,), validation_images=6, timing=False)
# Ctrl-C / a kill, and the original failure (a module missing halfway through a build).
ABORTS = [KeyboardInterrupt(), ModuleNotFoundError("No module named 'faster_coco_eval'")]


def _abort_after_the_artifact_is_written(
    monkeypatch: pytest.MonkeyPatch, error: BaseException, out: Path
) -> list[Path]:
    """Let the variant's ONNX be written, then fail in the next step (validating it)."""
    written: list[Path] = []

    def measure(*args: object) -> object:
        written.extend(out.glob(f"{PREFIX}*/fp32.onnx"))  # the step before really wrote it
        assert written
        raise error

    monkeypatch.setattr(builder, "measure", measure)
    return written


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("error", ABORTS, ids=["interrupt", "missing-module"])
def test_an_aborted_first_build_leaves_no_artifact_and_no_manifest(
    tmp_path: Path,
    default_model_source: Path,
    monkeypatch: pytest.MonkeyPatch,
    error: BaseException,
) -> None:
    written = _abort_after_the_artifact_is_written(monkeypatch, error, tmp_path / DEFAULT_MODEL)
    with pytest.raises(type(error)):
        build_model(DEFAULT_MODEL_DIR, tmp_path, FP32_ONLY, progress=False)
    assert written and not written[0].exists()  # the staged file went with its folder
    # Nothing but the (empty) build lock, which is no result.
    assert _files(tmp_path) in ({}, {LOCK_FILE: b""})
    assert Manifest.load(tmp_path / DEFAULT_MODEL) is None


@pytest.mark.parametrize("error", ABORTS, ids=["interrupt", "missing-module"])
def test_an_aborted_rebuild_keeps_the_earlier_good_build_intact(
    tmp_path: Path, built_engines: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    out = tmp_path / DEFAULT_MODEL
    shutil.copytree(built_engines / DEFAULT_MODEL, out)
    (out / f"{PREFIX}999999999-left-by-a-killed-build").mkdir()  # no such process
    before = _files(out)
    assert "fp32.onnx" in before and "manifest.json" in before
    _abort_after_the_artifact_is_written(monkeypatch, error, out)
    with pytest.raises(type(error)):
        build_model(
            DEFAULT_MODEL_DIR,
            tmp_path,
            BuildConfig(
                precisions=(Precision.FP32,), validation_images=6, timing=False, force=True
            ),
            progress=False,
        )
    assert _files(out) == before  # same names, same bytes: manifest and artifacts untouched
    assert not list(out.glob(f"{PREFIX}*"))  # the dead build's leftovers were swept too
