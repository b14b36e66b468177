"""``/detect`` and KServe v2 infer are accounted by one request path, against a real server.

The engine is held at a gate (a file the test creates) so the in-flight gauge is read while a
request is really inside the server, not guessed with a sleep.
"""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from engines.model.preprocess import decode_image, letterbox
from tests.conftest import Server
from tests.service.fault_engines import FAULT_SERVER
from tests.service.scrape import Key, scrape, value, wait_for

pytestmark = pytest.mark.slow
MODEL = "yolov3-tiny-coco"
GARBLED_BATCH = 3  # the third batch this server runs comes back in a dtype v2 cannot carry
INFLIGHT = ("detect_inflight_requests", {"model": MODEL})
SELECTED = ("detect_precision_selected_total", {"model": MODEL, "requested": "auto"})
DURATION = ("detect_request_duration_seconds_count", {"model": MODEL})


def requests_with(status: int) -> Key:
    return "detect_requests_total", {"model": MODEL, "status": str(status)}


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gate") / "open"


@pytest.fixture(scope="module")
def gated(server_factory: Callable[..., Server], gate: Path) -> Server:
    env = {
        "DETECT_MAX_BATCH": "1",  # one image, one batch: batch numbers are request numbers
        "FAULT_GATE_FILE": str(gate),
        "FAULT_GARBLE_BATCHES": str(GARBLED_BATCH),
    }
    return server_factory(env, module=FAULT_SERVER)


@pytest.fixture(scope="module")
def tensor(photo: Callable[[str], bytes]) -> np.ndarray:
    image = letterbox(decode_image(photo("bus"), max_pixels=10**8), (416, 416))[0]
    return image[np.newaxis].astype(np.float32)


def v2_infer(server: Server, tensor: np.ndarray, **header: object) -> httpx.Response:
    """A v2 request with the binary tensor extension (JSON header, then raw little-endian)."""
    raw = tensor.astype("<f4").tobytes()
    inputs = [
        {
            "name": "images",
            "datatype": "FP32",
            "shape": list(tensor.shape),
            "parameters": {"binary_data_size": len(raw)},
        }
    ]
    head = json.dumps({"inputs": inputs, **header}).encode()
    return httpx.post(
        f"{server.url}/v2/models/{MODEL}/infer",
        content=head + raw,
        headers={"Inference-Header-Content-Length": str(len(head))},
        timeout=120,
    )


def held_in_flight(
    server: Server, gate: Path, send: Callable[[], httpx.Response]
) -> tuple[httpx.Response, dict[str, float]]:
    """Send with the engine held; return the reply and how each accounting metric moved."""
    keys = {"inflight": INFLIGHT, "selected": SELECTED, "200": requests_with(200)}
    keys["duration"] = DURATION
    gate.unlink(missing_ok=True)
    before = scrape(server)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(send)
        wait_for(server, INFLIGHT, value(before, INFLIGHT) + 1)  # inside the server, held
        during = scrape(server)
        gate.touch()
        reply = pending.result(timeout=120)
    after = scrape(server)
    moved = {k: value(after, key) - value(before, key) for k, key in keys.items()}
    moved["inflight while held"] = value(during, INFLIGHT) - value(before, INFLIGHT)
    return reply, moved


@pytest.fixture(scope="module")
def both_routes(
    gated: Server, gate: Path, tensor: np.ndarray, photo: Callable[[str], bytes]
) -> Iterator[dict[str, tuple[httpx.Response, dict[str, float]]]]:
    """Batch 1 is a v2 request, batch 2 a /detect request, each held in flight."""
    v2 = held_in_flight(gated, gate, lambda: v2_infer(gated, tensor))
    image = photo("bus")
    detect = held_in_flight(
        gated,
        gate,
        lambda: httpx.post(f"{gated.url}/detect", files={"image": ("b", image)}, timeout=120),
    )
    yield {"v2": v2, "detect": detect}
    gate.touch()


def test_v2_infer_is_accounted_exactly_as_detect(
    both_routes: dict[str, tuple[httpx.Response, dict[str, float]]],
) -> None:
    v2_reply, v2_moved = both_routes["v2"]
    detect_reply, detect_moved = both_routes["detect"]
    assert v2_reply.status_code == 200, v2_reply.text
    assert detect_reply.status_code == 200, detect_reply.text
    expected = {"inflight while held": 1, "inflight": 0, "selected": 1, "200": 1, "duration": 1}
    assert v2_moved == expected
    assert detect_moved == expected


def test_v2_failures_are_counted_with_their_status(
    gated: Server,
    gate: Path,
    tensor: np.ndarray,
    both_routes: dict[str, tuple[httpx.Response, dict[str, float]]],
) -> None:
    gate.touch()
    before = scrape(gated)
    # A malformed output request used to fail while encoding the reply: 500, counted as 200.
    # An unknown output name passes the v2 schema and is refused once a variant is chosen.
    malformed = v2_infer(gated, tensor, outputs=[{"name": "no-such-output"}])
    assert malformed.status_code == 400, malformed.text
    assert "unknown output" in malformed.json()["error"]
    # Batch 3 comes back from the engine in a dtype v2 cannot encode: the failure happens
    # after inference, while the reply is built, and is counted as what the client got.
    garbled = v2_infer(gated, tensor)
    assert garbled.status_code == 500, garbled.text
    assert "not a v2 type" in garbled.json()["error"]
    after = scrape(gated)
    for status, count in ((400, 1), (500, 1), (200, 0)):
        key = requests_with(status)
        assert value(after, key) - value(before, key) == count, status
    assert value(after, INFLIGHT) == 0
    assert value(after, SELECTED) - value(before, SELECTED) == 2
