"""Reload and unload with requests in flight, against a real server whose engine holds every
batch at a gate (``tests.service.fault_engines``) until the test opens it: requests finish on
the version they started on, none fails; and reloads under continuous traffic (``/detect``, the
v2 image model and raw v2 tensors, concurrently) fail nothing."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.conftest import Server
from tests.service.fault_engines import FAULT_SERVER
from tests.service.scrape import scrape, value, wait_for, wait_until

pytestmark = pytest.mark.slow
MODEL = "yolov3-tiny-coco"
INFLIGHT = ("detect_inflight_requests", {"model": MODEL})


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gate") / "open"


@pytest.fixture(scope="module")
def gated(server_factory: Callable[..., Server], gate: Path) -> Server:
    return server_factory(
        {
            "DETECT_MODEL_CONTROL": "true",
            "FAULT_GATE_FILE": str(gate),
            "DETECT_MAX_BATCH": "4",
            # Held at the gate as long as the test needs: no deadline may decide the outcome.
            "DETECT_DEFAULT_DEADLINE_MS": "600000",
            "DETECT_SHUTDOWN_GRACE_S": "120",
        },
        module=FAULT_SERVER,
    )


def detect(server: Server, data: bytes) -> httpx.Response:
    return httpx.post(
        f"{server.url}/detect", params={"model": MODEL}, files={"image": ("i", data)}, timeout=300
    )


def image_model(server: Server, data: bytes) -> str:
    client = httpclient.InferenceServerClient(
        server.url.removeprefix("http://"), network_timeout=300
    )
    image = httpclient.InferInput("IMAGE", [1], "BYTES")
    image.set_data_from_numpy(np.array([data], dtype=object))
    version: str = client.infer(f"{MODEL}.detect", [image]).get_response()["model_version"]
    return version


def raw_tensor(client: httpclient.InferenceServerClient) -> str:
    tensor = httpclient.InferInput("images", [1, 3, 416, 416], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3, 416, 416), np.float32), binary_data=True)
    version: str = client.infer(MODEL, [tensor]).get_response()["model_version"]
    return version


def index(server: Server) -> list[tuple[str, str, str]]:
    entries = httpx.post(f"{server.url}/v2/repository/index").json()
    return [(e["version"], e["state"], e["reason"]) for e in entries if e["name"] == MODEL]


def version_of(answer: httpx.Response | str) -> str:
    if isinstance(answer, str):
        return answer
    assert answer.status_code == 200, answer.text
    return answer.headers["X-Model-Version"]


def test_requests_in_flight_finish_on_the_version_they_started_on(
    gated: Server, gate: Path, photo: Callable[[str], bytes]
) -> None:
    data = photo("bus")
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        try:
            held = [pool.submit(detect, gated, data) for _ in range(4)]
            held += [pool.submit(image_model, gated, data) for _ in range(2)]
            wait_for(gated, INFLIGHT, 6)  # all six hold version 1, none can finish
            loaded = httpx.post(f"{gated.url}/v2/repository/models/{MODEL}/load", timeout=300)
            assert loaded.json() == {"name": MODEL, "version": "2", "state": "READY"}
            entries = index(gated)
            assert ("2", "READY", "") in entries
            assert ("1", "UNLOADING", "draining: 6 requests still running on it") in entries
            later = [pool.submit(detect, gated, data) for _ in range(2)]
            wait_for(gated, INFLIGHT, 8)
        finally:
            gate.touch()
        assert [version_of(f.result(timeout=300)) for f in held] == ["1"] * 6
        assert [version_of(f.result(timeout=300)) for f in later] == ["2"] * 2
    wait_until(lambda: index(gated) == [("2", "READY", "")], "version 1 never finished draining")
    ready = ("detect_engine_ready", {"model": MODEL, "precision": "fp32"})
    assert value(scrape(gated), ready) == 1


def test_unload_waits_for_its_requests_then_load_brings_it_back(
    gated: Server, gate: Path, photo: Callable[[str], bytes]
) -> None:
    data = photo("bus")
    gate.unlink()  # close the gate again
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        try:
            held = [pool.submit(detect, gated, data) for _ in range(3)]
            wait_for(gated, INFLIGHT, 3)
            unload_url = f"{gated.url}/v2/repository/models/{MODEL}/unload"
            unloading = pool.submit(httpx.post, unload_url, timeout=300)
            wait_until(lambda: index(gated)[0][1] == "UNLOADING", "the unload never started")
            refused = detect(gated, data)  # no new request reaches a model being unloaded
            assert refused.status_code == 404 and "unloaded" in refused.text
            assert not unloading.done()  # it answers once its three requests are answered
        finally:
            gate.touch()
        assert unloading.result(timeout=300).status_code == 200
        assert [version_of(f.result(timeout=300)) for f in held] == ["2"] * 3
    assert index(gated) == [("2", "UNAVAILABLE", "unloaded")]
    assert httpx.get(f"{gated.url}/v2/models/{MODEL}/ready").status_code == 404
    ready = ("detect_engine_ready", {"model": MODEL, "precision": "fp32"})
    assert value(scrape(gated), ready) == 0
    httpx.post(f"{gated.url}/v2/repository/models/{MODEL}/load", timeout=300)
    assert version_of(detect(gated, data)) == "3"
    assert value(scrape(gated), ready) == 1


def test_reloads_under_concurrent_traffic_fail_nothing(
    gated: Server, photo: Callable[[str], bytes]
) -> None:
    data = photo("bus")
    stop = threading.Event()
    address = gated.url.removeprefix("http://")

    def client_loop(kind: str) -> list[str]:
        """Requests one after another until stopped; the version that answered each."""
        seen: list[str] = []
        v2 = httpclient.InferenceServerClient(address, network_timeout=300)
        while not stop.is_set() or len(seen) < 2:
            if kind == "detect":
                seen.append(version_of(detect(gated, data)))
            elif kind == "image":
                seen.append(image_model(gated, data))
            else:
                seen.append(raw_tensor(v2))
        return seen

    first = int(index(gated)[0][0])
    kinds = ["detect"] * 3 + ["image", "raw", "raw"]
    with concurrent.futures.ThreadPoolExecutor(len(kinds)) as pool:
        loops = [pool.submit(client_loop, kind) for kind in kinds]
        try:
            for _ in range(3):
                loaded = httpx.post(f"{gated.url}/v2/repository/models/{MODEL}/load", timeout=300)
                assert loaded.status_code == 200, loaded.text
        finally:
            stop.set()
        histories = [f.result(timeout=300) for f in loops]  # any failed request raises here
    versions = {str(v) for v in range(first, first + 4)}
    for history in histories:
        assert set(history) <= versions, history
        # A request that starts after a reload never sees an older version.
        assert [int(v) for v in history] == sorted(int(v) for v in history), history
    wait_until(lambda: len(index(gated)) == 1, "an old version never finished draining")
    assert index(gated) == [(str(first + 3), "READY", "")]
