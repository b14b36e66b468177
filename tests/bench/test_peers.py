"""The peer benchmark's plain server answers like detect-serve, and its scoring is honest."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from bench.peer_common import OPTIONS
from bench.peer_fastapi import create_app
from bench.peers import _agreement
from engines.model.pipeline import load_model_pipeline
from engines.precision import Precision
from engines.runtime.onnxruntime import OnnxRuntimeEngine


def test_plain_server_matches_the_pipeline_and_scores_one(
    default_model_source: Path, photo: Callable[[str], bytes]
) -> None:
    pipeline = load_model_pipeline(default_model_source, "peer")
    engine = OnnxRuntimeEngine(default_model_source, Precision.FP32)
    try:
        reference = pipeline.detect_batch(engine, [pipeline.prepare(photo("bus"))], OPTIONS)[0]
    finally:
        engine.close()
    with TestClient(create_app(default_model_source)) as client:
        reply = client.post("/detect", files={"image": ("bus.jpg", photo("bus"))})
    assert reply.status_code == 200
    detections = reply.json()["detections"]
    assert len(detections) == len(reference) > 0
    body = json.dumps(detections)
    assert _agreement({body: 3}, reference, pipeline.info.num_classes) == 1.0
    # An answer that finds nothing scores 0, and counts by how often it was given.
    assert _agreement({body: 1, "[]": 1}, reference, pipeline.info.num_classes) == 0.5
