"""``precision=auto`` moves under load through the real wiring: the scheduler's observer feeds
queue waits to the model's selector, and the next request is answered by another variant.

Real FP32 and INT8 variants (built by ``detect-serve build``) behind a gate (``fault_engines``):
the test decides how long requests wait in the queue, the server decides everything else.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import DEFAULT_MODEL, Server
from tests.service.fault_engines import FAULT_SERVER
from tests.service.scrape import moved, scrape, wait_for, wait_until

pytestmark = pytest.mark.slow
SLO_MS = 50.0
QUEUED_AT_LEAST_S = 0.5  # 10x the SLO: the waits the selector sees are far above it


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("gate") / "open"
    path.touch()
    yield path
    path.touch()


def detect(server: Server, image: bytes) -> httpx.Response:
    reply = httpx.post(
        f"{server.url}/detect",
        files={"image": ("b", image)},
        params={"precision": "auto", "deadline_ms": 60_000},
        timeout=180,
    )
    assert reply.status_code == 200, reply.text
    return reply


def answered_by(server: Server, image: bytes) -> str:
    return str(detect(server, image).json()["precision"])


def test_auto_moves_to_the_faster_variant_under_queueing_and_back(
    server_factory: Callable[..., Server],
    fp32_int8_engines: Path,
    gate: Path,
    photo: Callable[[str], bytes],
) -> None:
    server = server_factory(
        {
            "DETECT_ENGINES_DIR": str(fp32_int8_engines),
            "FAULT_GATE_FILE": str(gate),
            "DETECT_MAX_BATCH": "1",
            # Only FP32 meets an agreement of 1.0: auto starts there whatever INT8 measured.
            "DETECT_AUTO_MIN_AGREEMENT": "1.0",
            "DETECT_QUEUE_WAIT_SLO_MS": str(SLO_MS),
            # FP32 runs 4x its engine time, warm-up included: INT8 is the faster variant on
            # the server's own live figures however loaded the machine is (a build timed under
            # load once ranked them the other way round).
            "FAULT_SLOWDOWN": "4",
            "FAULT_DELAY_PRECISIONS": "fp32",
        },
        module=FAULT_SERVER,
    )
    variants = httpx.get(f"{server.url}/models").json()["models"][0]["variants"]
    live = {v["precision"]: v["live_latency_ms"]["1"] for v in variants}
    assert live["int8"] < 0.9 * live["fp32"], f"INT8 not measured clearly faster: {live}"
    image = photo("coffee")
    assert answered_by(server, image) == "fp32"  # no pressure: the most accurate variant
    fp32 = ("detect_queue_depth", {"model": DEFAULT_MODEL, "precision": "fp32"})
    batches = ("detect_batch_size_count", {"model": DEFAULT_MODEL, "precision": "fp32"})
    before = scrape(server)
    gate.unlink()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        held = pool.submit(detect, server, image)
        wait_for(server, batches, 2)  # the held request is inside the engine
        queued = [pool.submit(detect, server, image) for _ in range(2)]
        wait_for(server, fp32, 2)
        time.sleep(QUEUED_AT_LEAST_S)  # not a hope: a minimum queue wait the test sets
        gate.touch()
        replies = [held.result(), *(f.result() for f in queued)]
    assert [r.json()["precision"] for r in replies] == ["fp32"] * 3
    assert min(r.json()["timing_ms"]["queue"] for r in replies[1:]) >= QUEUED_AT_LEAST_S * 1000
    # Sustained queueing on FP32 moved auto to the faster INT8 ...
    assert answered_by(server, image) == "int8"
    after = scrape(server)
    selected = ("detect_precision_selected_total", {"requested": "auto", "selected": "int8"})
    assert moved(before, after, selected) == 1
    # ... and once INT8 answers without queueing, auto steps back (after the hold time).
    wait_until(lambda: answered_by(server, image) == "fp32", "auto never moved back to FP32")
