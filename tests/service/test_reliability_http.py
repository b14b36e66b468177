"""Faults, shutdown and security against real server processes."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server
from tests.service.fault_engines import FAULT_SERVER
from tests.service.scrape import wait_for, wait_until

pytestmark = pytest.mark.slow
FAULTY = {"DETECT_MAX_BATCH": "1"}


def post(server: Server, data: bytes, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{server.url}/detect", files={"image": ("i", data)}, timeout=120, **kwargs)  # type: ignore[arg-type]


def test_a_failing_batch_fails_only_its_own_requests(
    server_factory: Callable[..., Server], photo: Callable[[str], bytes]
) -> None:
    server = server_factory({**FAULTY, "FAULT_FAIL_BATCHES": "2"}, module=FAULT_SERVER)
    data = photo("bus")
    statuses = [post(server, data).status_code for _ in range(3)]
    assert statuses == [200, 500, 200]
    assert httpx.get(f"{server.url}/health/ready").status_code == 200


def test_fatal_engine_error_flips_readiness_with_reason(
    server_factory: Callable[..., Server], photo: Callable[[str], bytes]
) -> None:
    server = server_factory({**FAULTY, "FAULT_FATAL_AFTER": "1"}, module=FAULT_SERVER)
    data = photo("bus")
    assert post(server, data).status_code == 200
    dying = post(server, data)
    assert dying.status_code == 503 and dying.json()["error"]["code"] == "engine_unavailable"
    after = post(server, data)
    assert after.status_code == 503 and "Retry-After" in after.headers
    ready = httpx.get(f"{server.url}/health/ready")
    assert ready.status_code == 503
    assert any("device lost" in r for r in ready.json()["reasons"]), ready.json()
    assert httpx.get(f"{server.url}/health/live").status_code == 200


def listening(server: Server) -> bool:
    host, port = server.url.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except ConnectionRefusedError:
        return False
    return True


def test_sigterm_under_load_finishes_accepted_requests_and_exits(
    server_factory: Callable[..., Server], photo: Callable[[str], bytes], tmp_path: Path
) -> None:
    gate = tmp_path / "open"  # the engine holds every batch until the test creates it
    server = server_factory(
        {
            **FAULTY,
            "FAULT_GATE_FILE": str(gate),
            "DETECT_MAX_BATCH": "4",
            "DETECT_SHUTDOWN_GRACE_S": "60",
        },
        module=FAULT_SERVER,
    )
    data = photo("bus")
    decoded = ("detect_preprocess_duration_seconds_count", {"model": "yolov3-tiny-coco"})
    # Held at the gate for as long as the test takes: the default 10 s deadline must not decide.
    patient = {"params": {"deadline_ms": 600_000}}
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        accepted = [pool.submit(post, server, data, **patient) for _ in range(12)]
        try:
            # Every request decoded: each is queued or held inside the engine, none finished.
            wait_for(server, decoded, 12)
            server.process.send_signal(signal.SIGTERM)
            wait_until(lambda: not listening(server), "the listener stayed open after SIGTERM")
            with pytest.raises(httpx.ConnectError):
                post(server, data)  # new work is refused
        finally:
            gate.touch()
        results = [f.result(timeout=120) for f in accepted]
    assert [r.status_code for r in results] == [200] * 12, [r.text for r in results]
    # uvicorn re-raises the signal after its graceful shutdown, so -SIGTERM is a clean exit too.
    assert server.process.wait(60) in (0, -signal.SIGTERM)
    assert "drained: every accepted request was answered" in server.log()


def test_api_keys_guard_inference_but_not_health(
    server_factory: Callable[..., Server], photo: Callable[[str], bytes]
) -> None:
    server = server_factory({"DETECT_API_KEYS": json.dumps(["k-one", "k-two"])})
    data = photo("coffee")
    missing = post(server, data)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    assert post(server, data, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert post(server, data, headers={"Authorization": "Bearer k-two"}).status_code == 200
    assert post(server, data, headers={"X-API-Key": "k-one"}).status_code == 200
    assert httpx.get(f"{server.url}/models").status_code == 401
    assert httpx.get(f"{server.url}/health/ready").status_code == 200
    assert httpx.get(f"{server.url}/metrics").status_code == 200


def test_cors_is_off_by_default_and_configurable(
    server: Server, server_factory: Callable[..., Server]
) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    closed = httpx.options(f"{server.url}/detect", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    opened = server_factory({"DETECT_CORS_ORIGINS": json.dumps(["https://app.example"])})
    allowed = httpx.options(f"{opened.url}/detect", headers=preflight)
    assert allowed.headers.get("access-control-allow-origin") == "https://app.example"
