"""The one mapping from errors to HTTP: statuses, codes, headers, bodies (in-process app)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.requests import ClientDisconnect

from engines.errors import ImageDecodeError, ImageTooLargeError, InferenceError
from service.errors import (
    BadRequest,
    EngineUnavailable,
    Overloaded,
    RequestTimeout,
    ServiceError,
    ShuttingDownError,
    Unauthorized,
    error_body,
    install_error_handlers,
    to_service_error,
)
from service.scheduler.errors import SchedulerError


@pytest.mark.parametrize(
    ("estimate_s", "header"),
    # Rounded up, at least 1 s, at most an hour (a client must not be told to go for a day).
    [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.01, "2"), (2.5, "3"), (3600.5, "3600"), (1e6, "3600")],
)
def test_overloaded_retry_after_is_the_wait_in_whole_seconds_rounded_up(
    estimate_s: float, header: str
) -> None:
    err = Overloaded("full", retry_after_s=estimate_s)
    assert (err.status, err.code, err.headers) == (503, "overloaded", {"Retry-After": header})


def test_other_errors_with_headers() -> None:
    assert EngineUnavailable("dead").headers == {"Retry-After": "5"}
    assert EngineUnavailable("dead").status == 503
    assert Unauthorized().headers == {"WWW-Authenticate": "Bearer"} and Unauthorized().status == 401
    # A client too slow to send its body, and an upload cut by shutdown, lose the connection.
    slow = RequestTimeout("too slow")
    assert (slow.status, slow.message, slow.headers) == (408, "too slow", {"Connection": "close"})
    cut = ShuttingDownError("stopping")
    assert (cut.status, cut.code, cut.message) == (503, "shutting_down", "stopping")
    assert cut.headers == {"Retry-After": "5", "Connection": "close"}


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (ImageTooLargeError("big"), 413, "image_too_large"),
        (ImageDecodeError("junk"), 400, "invalid_image"),
        (ClientDisconnect(), 499, "client_closed_request"),
        (InferenceError("device lost", fatal=True), 503, "engine_unavailable"),
        (InferenceError("bad batch"), 500, "inference_failed"),
        (SchedulerError("unheard of"), 500, "internal_error"),
        (RuntimeError("secret detail"), 500, "internal_error"),
    ],
)
def test_engine_and_unexpected_errors_map_to_the_taxonomy(
    error: BaseException, status: int, code: str
) -> None:
    mapped = to_service_error(error)
    assert (mapped.status, mapped.code) == (status, code)
    if code == "internal_error":
        assert mapped.message == "internal error"  # nothing internal leaks


def test_service_errors_pass_through_unchanged() -> None:
    err = BadRequest("nope")
    assert to_service_error(err) is err


def test_an_error_reads_as_its_message_in_logs_and_tracebacks() -> None:
    """``str(err)`` and ``err.args`` are what logging, tracing and uvicorn print."""
    err = to_service_error(ImageDecodeError("not a JPEG, PNG or WebP"))
    assert str(err) == err.message == "not a JPEG, PNG or WebP"
    assert err.args == (err.message,)


def error_of(r: Any) -> dict[str, object]:
    """The error object without its request ID (``-`` here: no request-ID middleware in front)."""
    error: dict[str, object] = r.json()["error"]
    assert error.pop("request_id", "-") == "-"
    return error


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/overloaded")
    @app.get("/v2/overloaded")
    async def overloaded() -> None:
        raise Overloaded("queue full", retry_after_s=2.2)

    @app.get("/number")
    async def number(x: int) -> int:
        return x

    @app.get("/crash")
    async def crash() -> None:
        raise RuntimeError("secret detail")

    return TestClient(app, raise_server_exceptions=False)


def test_service_error_becomes_json_with_status_and_headers(client: TestClient) -> None:
    r = client.get("/overloaded")
    assert r.status_code == 503 and r.headers["Retry-After"] == "3"
    assert error_of(r) == {"code": "overloaded", "message": "queue full"}
    v2 = client.get("/v2/overloaded")  # KServe v2 fixes its own error shape
    assert v2.status_code == 503 and v2.json() == {"error": "queue full"}


def test_validation_not_found_method_and_crash(client: TestClient) -> None:
    r = client.get("/number", params={"x": "lots"})
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "invalid_parameter"
    assert error["message"].startswith("invalid parameter query.x: ")
    assert error["details"][0]["loc"] == ["query", "x"]
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = client.post("/number")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    crash = client.get("/crash")
    assert crash.status_code == 500
    assert error_of(crash) == {"code": "internal_error", "message": "internal error"}


def test_error_body_carries_details_only_when_given() -> None:
    plain = {"code": "c", "message": "m", "request_id": "-"}  # "-": outside any request
    assert error_body("c", "m") == {"error": plain}
    assert error_body("c", "m", [1]) == {"error": {**plain, "details": [1]}}
    assert ServiceError("x").status == 500


# The documented contract: each machine-readable error code has one HTTP status (and gRPC code).
DOCUMENTED: dict[str, tuple[int, str | None]] = {
    "bad_request": (400, "INVALID_ARGUMENT"),
    "invalid_image": (400, "INVALID_ARGUMENT"),
    "precision_unavailable": (400, "INVALID_ARGUMENT"),
    "unauthorized": (401, "UNAUTHENTICATED"),
    "model_not_found": (404, "NOT_FOUND"),
    "payload_too_large": (413, "RESOURCE_EXHAUSTED"),
    "image_too_large": (413, "RESOURCE_EXHAUSTED"),
    "unsupported_media_type": (415, "INVALID_ARGUMENT"),
    "overloaded": (503, "UNAVAILABLE"),
    "decode_overloaded": (503, "UNAVAILABLE"),
    "shutting_down": (503, "UNAVAILABLE"),
    "request_timeout": (408, None),  # HTTP only: a body sent too slowly (gRPC has no such case)
    "engine_unavailable": (503, "UNAVAILABLE"),
    "deadline_exceeded": (504, "DEADLINE_EXCEEDED"),
    "client_closed_request": (499, "CANCELLED"),
    "inference_failed": (500, "INTERNAL"),
}


@pytest.mark.parametrize("code", sorted(DOCUMENTED))
def test_each_error_code_has_its_documented_status(code: str) -> None:
    from service import errors

    classes = [c for c in vars(errors).values() if isinstance(c, type)]
    (cls,) = [c for c in classes if issubclass(c, ServiceError) and c.code == code]
    err = cls.__new__(cls)
    ServiceError.__init__(err, "x")
    status, grpc_code = DOCUMENTED[code]
    assert cls.status == status
    if grpc_code is not None:
        assert errors.grpc_status_name(err) == grpc_code
