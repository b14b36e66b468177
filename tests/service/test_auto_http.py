"""`auto` under load, against a real server: it moves to the faster variant while the queue
stays long and comes back when the load is gone.

The stand-ins: both variants run the real model's FP32 graph (this test is about the policy,
not INT8 numerics), and the fault server makes FP32 batches take three times as long. The
manifest records INT8 as *slower* (as a build on a busy machine once did): only the live
figures can show otherwise.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from engines.artifacts.manifest import Manifest
from engines.artifacts.record import Timings, VariantRecord
from engines.model.pipeline import load_model_pipeline
from engines.precision import Precision
from engines.runtime.backends import current_host
from engines.sources.registry import sha256_file
from tests.conftest import DEFAULT_MODEL, Server
from tests.engines.build_fixtures import accuracy
from tests.service.fault_engines import FAULT_SERVER

pytestmark = pytest.mark.slow
GIVE_UP_S = 120.0  # generous: the machine may be shared; nothing here asserts on time


def stand_in_build(engines: Path, source: Path) -> None:
    folder = engines / DEFAULT_MODEL
    folder.mkdir(parents=True)
    host = current_host("onnxruntime")
    common = {"backend": "onnxruntime", "device": host.device, "tool_versions": host.tool_versions}
    records = []
    for precision, agreement, ms in ((Precision.FP32, 1.0, 10.0), (Precision.INT8, 0.97, 11.0)):
        artifact = folder / f"{precision.value}.onnx"
        shutil.copyfile(source, artifact)
        records.append(
            VariantRecord(
                precision=precision,
                artifact=artifact.name,
                artifact_sha256=sha256_file(artifact),
                accuracy=accuracy(agreement, budget=0.95),
                timings=Timings(latency_ms={1: ms, 8: 8 * ms}, measured_under="a busy machine"),
                **common,
            ).accept()
        )
    pipeline = load_model_pipeline(source, DEFAULT_MODEL)
    Manifest(
        model=DEFAULT_MODEL,
        source_path=str(source),
        source_sha256=sha256_file(source),
        layout=pipeline.layout.name,
        input_size=pipeline.info.input_size,
        class_names=list(pipeline.info.class_names),
        variants=records,
    ).save(folder)


def answered_by(server: Server, image: bytes) -> str:
    reply = httpx.post(f"{server.url}/detect", files={"image": ("bus.jpg", image)}, timeout=120)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["precision"])


def test_auto_moves_under_sustained_queue_wait_and_comes_back(
    server_factory: Callable[..., Server],
    default_model_source: Path,
    photo: Callable[[str], bytes],
    tmp_path: Path,
) -> None:
    stand_in_build(tmp_path / "engines", default_model_source)
    server = server_factory(
        {
            "DETECT_ENGINES_DIR": str(tmp_path / "engines"),
            "DETECT_QUEUE_WAIT_SLO_MS": "50",
            "DETECT_DEFAULT_DEADLINE_MS": "120000",
            "FAULT_SLOWDOWN": "3",
            "FAULT_DELAY_PRECISIONS": "fp32",
        },
        module=FAULT_SERVER,
    )
    image = photo("bus")
    models = httpx.get(f"{server.url}/models").json()["models"][0]
    live = {v["precision"]: v for v in models["variants"]}
    # Live figures from this host's warm-up replace the manifest's (which said INT8 is slower).
    assert live["fp32"]["live_samples"]["8"] >= 1
    assert live["fp32"]["live_latency_ms"]["8"] > live["int8"]["live_latency_ms"]["8"]
    assert "warm-up" in live["int8"]["live_measured_under"]["8"]
    assert models["auto_precision"] == "fp32"  # at rest: the variant within the auto budget
    assert answered_by(server, image) == "fp32"

    # Sustained load: eight closed-loop clients until auto has moved.
    answers: list[str] = []
    give_up = time.monotonic() + GIVE_UP_S

    def client() -> None:
        while time.monotonic() < give_up and answers[-20:].count("int8") < 10:
            answers.append(answered_by(server, image))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: client(), range(8)))
    assert answers[-20:].count("int8") >= 10, answers
    assert answers[0] == "fp32"

    # Load gone: a lone client is soon answered by the at-rest choice again.
    back = []
    while time.monotonic() < give_up + GIVE_UP_S and back[-3:] != ["fp32"] * 3:
        back.append(answered_by(server, image))
        time.sleep(0.2)
    assert back[-3:] == ["fp32"] * 3, back
    after = httpx.get(f"{server.url}/models").json()["models"][0]
    assert after["auto_precision"] == "fp32" and after["auto_under_pressure"] is False
