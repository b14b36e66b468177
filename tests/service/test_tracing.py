"""OpenTelemetry spans for one request, caught with the SDK's in-memory exporter (in-process
app, real model: the spans come from the same ``service.flow`` every protocol uses)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from service.app import create_app
from service.config import Settings
from tests.conftest import MODELS_DIR

sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="pip install 'detect-serve[otel]'")
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

pytestmark = pytest.mark.slow


def test_request_spans(
    tmp_path: Path, default_model_source: Path, photo: Callable[[str], bytes]
) -> None:
    from fastapi.testclient import TestClient

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # global, once per process: this is its only setter
    settings = Settings(models_dir=MODELS_DIR, engines_dir=tmp_path / "engines", grpc_port=0)
    with TestClient(create_app(settings)) as client:
        r = client.post("/detect", files={"image": ("bus.jpg", photo("bus"), "image/jpeg")})
        assert r.status_code == 200, r.text
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert {"detect.request", "decode", "queue", "inference", "postprocess"} <= set(spans)
    root = spans["detect.request"]
    assert root.attributes is not None and root.attributes["precision"] == "fp32"
    for name in ("decode", "queue", "inference", "postprocess"):
        child = spans[name]
        assert child.parent is not None and child.parent.span_id == root.context.span_id, name
        assert child.start_time is not None and child.end_time is not None
        assert root.start_time <= child.start_time <= child.end_time <= root.end_time, name
    assert spans["inference"].attributes["batch_size"] == 1  # type: ignore[index]
