"""Faults, shutdown and security against real server processes."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import time
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import Server
from tests.service.fault_engines import FAULT_SERVER

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


def test_sigterm_under_load_finishes_accepted_requests_and_exits(
    server_factory: Callable[..., Server], photo: Callable[[str], bytes]
) -> None:
    server = server_factory(
        {
            **FAULTY,
            "FAULT_DELAY_S": "0.05",
            "DETECT_MAX_BATCH": "4",
            "DETECT_SHUTDOWN_GRACE_S": "20",
        },
        module=FAULT_SERVER,
    )
    data = photo("bus")
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        accepted = [pool.submit(post, server, data) for _ in range(12)]
        time.sleep(1.0)  # every request is now inside the server (decoding, queued or running)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.HTTPError):
            post(server, data)  # the listener is closed: new work is refused
        results = [f.result(timeout=60) for f in accepted]
    assert [r.status_code for r in results] == [200] * 12, [r.text for r in results]
    # uvicorn re-raises the signal after its graceful shutdown, so -SIGTERM is a clean exit too.
    assert server.process.wait(30) in (0, -signal.SIGTERM)
    assert "drained: every accepted request was answered" in server.log()
    assert time.monotonic() - signalled < 20


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
