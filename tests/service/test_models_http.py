"""One variant record from manifest to ``GET /models``: what the build wrote is what is shown."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from engines.artifacts.manifest import Manifest
from engines.artifacts.record import Timings, VariantRecord
from engines.model.pipeline import load_model_pipeline
from engines.precision import Precision
from engines.runtime.backends import current_host
from engines.sources.registry import sha256_file
from tests.conftest import DEFAULT_MODEL, Server
from tests.engines.build_fixtures import accuracy

pytestmark = pytest.mark.slow


def recorded_build(engines: Path, source: Path) -> Manifest:
    """A build as the builder records it: fp32 accepted (timed, measured), int8 rejected."""
    folder = engines / DEFAULT_MODEL
    folder.mkdir(parents=True)
    shutil.copyfile(source, folder / "fp32.onnx")
    host = current_host("onnxruntime")
    pipeline = load_model_pipeline(source, DEFAULT_MODEL)
    common = {"backend": "onnxruntime", "device": host.device, "tool_versions": host.tool_versions}
    fp32 = VariantRecord(
        precision=Precision.FP32,
        artifact="fp32.onnx",
        artifact_sha256=sha256_file(folder / "fp32.onnx"),
        accuracy=accuracy(1.0, budget=1.0),
        timings=Timings(latency_ms={1: 12.5, 2: 20.0}),
        note="hand-recorded for the round-trip test",
        **common,
    ).accept()
    int8 = VariantRecord(precision=Precision.INT8, **common).reject("agreement 0.41 < 0.95")
    manifest = Manifest(
        model=DEFAULT_MODEL,
        source_path=str(source),
        source_sha256=sha256_file(source),
        layout=pipeline.layout.name,
        input_size=pipeline.info.input_size,
        class_names=list(pipeline.info.class_names),
        variants=[fp32, int8],
    )
    manifest.save(folder)
    return manifest


def test_models_shows_the_recorded_variant(
    server_factory: Callable[..., Server],
    default_model_source: Path,
    photo: Callable[[str], bytes],
    tmp_path: Path,
) -> None:
    manifest = recorded_build(tmp_path / "engines", default_model_source)
    fp32 = manifest.variant(Precision.FP32)
    assert fp32 is not None and fp32.timings is not None
    server = server_factory({"DETECT_ENGINES_DIR": str(tmp_path / "engines")})
    with server.client() as client:
        (entry,) = client.get("/models").json()["models"]
        image = {"image": ("bus.jpg", photo("bus"))}
        refused = client.post("/detect", params={"precision": "int8"}, files=image)
        answered = client.post("/detect", params={"precision": "fp32"}, files=image)
    (shown,) = entry["variants"]
    assert shown["precision"] == "fp32" and shown["backend"] == fp32.backend
    assert shown["ready"] is True
    assert shown["agreement"] == fp32.agreement
    assert {int(b): ms for b, ms in shown["latency_ms"].items()} == fp32.latency_ms
    assert shown["latency_measured_under"] == fp32.timings.measured_under
    assert shown["note"] == fp32.note
    assert entry["unavailable"] == {"int8": "rejected: agreement 0.41 < 0.95"}
    assert entry["layout"] == manifest.layout
    # The same reason answers a request for the refused precision; the recorded one serves.
    assert refused.status_code == 400
    assert "agreement 0.41 < 0.95" in refused.text
    assert answered.status_code == 200 and answered.json()["precision"] == "fp32"
