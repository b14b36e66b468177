"""The service's error taxonomy and the one place that maps errors to HTTP.

Every error leaves the service as ``{"error": {"code": ..., "message": ...}}`` (KServe v2 routes:
``{"error": "<message>"}``) with the right status. Bad input is 4xx, overload is 503 with
``Retry-After``, a deadline the client set that cannot be met is 504 with ``Retry-After`` (the
server's own default deadline missed is overload: 503), a dead engine is 503 (and readiness goes
false). The engines and the scheduler raise errors in their own terms; ``to_service_error`` maps
them here. Nothing internal leaks into a message.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from engines.errors import ImageDecodeError, ImageTooLargeError, InferenceError
from service.request_id import current as request_id
from service.scheduler.errors import (
    DeadlineUnmeetable,
    DecodeBusy,
    DecodeTooCostly,
    QueueFull,
    SchedulerError,
    ShuttingDown,
    TooManyImages,
    VariantOutOfService,
)

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error with an HTTP status, a stable machine-readable code and a human message."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)  # no-mutate: BaseException.__new__ keeps message in args too
        self.message = message
        self.headers = headers or {}


class BadRequest(ServiceError):
    status, code = 400, "bad_request"


class InvalidImage(ServiceError):
    status, code = 400, "invalid_image"


class PrecisionUnavailable(ServiceError):
    status, code = 400, "precision_unavailable"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"

    def __init__(self, message: str = "missing or invalid API key") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class ModelNotFound(ServiceError):
    status, code = 404, "model_not_found"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class ImageTooLarge(ServiceError):
    status, code = 413, "image_too_large"


class RequestTimeout(ServiceError):
    """The client sent its body too slowly (idle too long, or under the minimum rate)."""

    status, code = 408, "request_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Connection": "close"})


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


def retry_after(seconds: float) -> dict[str, str]:
    """``Retry-After`` in whole seconds (at least 1: 0 would invite an immediate retry)."""
    return {"Retry-After": str(max(1, min(3600, math.ceil(seconds))))}


class Overloaded(ServiceError):
    """The queue is full, load is shed or the server is draining: come back later."""

    status, code = 503, "overloaded"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message, headers=retry_after(retry_after_s))


class DecodeOverloaded(Overloaded):
    """The decode budget (memory in flight, decode workers) is spent for now."""

    code = "decode_overloaded"


class ShuttingDownError(Overloaded):
    """The server is stopping; a request still uploading at the grace deadline is cut."""

    code = "shutting_down"

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after_s=5)
        self.headers["Connection"] = "close"


class EngineUnavailable(ServiceError):
    status, code = 503, "engine_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "5"})


class DeadlineExceeded(ServiceError):
    """The deadline the client set (header or parameter) cannot be met."""

    status, code = 504, "deadline_exceeded"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message, headers=retry_after(retry_after_s))


class ClientClosedRequest(ServiceError):
    """The client went away before its answer was ready (nginx's 499); nobody reads the body,
    but metrics and logs should not count it as a server error."""

    status, code = 499, "client_closed_request"


class InferenceFailed(ServiceError):
    status, code = 500, "inference_failed"


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    # The request ID lets a client's bug report be matched to the server's log lines.
    error: dict[str, Any] = {"code": code, "message": message, "request_id": request_id.get()}
    if details is not None:
        error["details"] = details
    return {"error": error}


def _from_scheduler(exc: SchedulerError, client_deadline: bool) -> ServiceError:
    message = str(exc)
    if isinstance(exc, QueueFull):
        return Overloaded(message, retry_after_s=exc.retry_after_s)
    if isinstance(exc, DecodeBusy):
        return DecodeOverloaded(message, retry_after_s=exc.retry_after_s)
    if isinstance(exc, DecodeTooCostly):
        return ImageTooLarge(message)
    if isinstance(exc, ShuttingDown):
        return Overloaded(message, retry_after_s=5)
    if isinstance(exc, TooManyImages):  # could never be queued: retrying will not help
        return PayloadTooLarge(message)
    if isinstance(exc, DeadlineUnmeetable):
        if client_deadline:
            return DeadlineExceeded(message, retry_after_s=exc.retry_after_s)
        # The server's own default deadline: the client asked for nothing it could not have,
        # the server is just too busy (load shedding).
        return Overloaded(message, retry_after_s=exc.retry_after_s)
    if isinstance(exc, VariantOutOfService):
        return EngineUnavailable(message)
    log.error("unmapped scheduler error: %r", exc)
    return ServiceError("internal error")


def to_service_error(exc: BaseException, *, client_deadline: bool = True) -> ServiceError:
    """Translate engine- and scheduler-level errors into the service taxonomy.

    ``client_deadline``: whether the request's deadline was set by the client (504 when it
    cannot be met) or is the server's default (503: overload).
    """
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, SchedulerError):
        return _from_scheduler(exc, client_deadline)
    if isinstance(exc, ImageTooLargeError):
        return ImageTooLarge(str(exc))
    if isinstance(exc, ImageDecodeError):
        return InvalidImage(str(exc))
    if isinstance(exc, ClientDisconnect):
        return ClientClosedRequest("the client disconnected")
    if isinstance(exc, InferenceError):
        if exc.fatal:
            return EngineUnavailable(f"engine failed and was taken out of service: {exc}")
        return InferenceFailed(str(exc))
    log.error("unexpected error: %r", exc, exc_info=exc)
    return ServiceError("internal error")


def _body(request: Request, code: str, message: str, details: Any = None) -> dict[str, Any]:
    # The KServe v2 protocol fixes its own error shape: {"error": "<message>"}.
    if request.url.path.startswith("/v2"):
        return {"error": message}
    return error_body(code, message, details)


def _json(request: Request, err: ServiceError) -> JSONResponse:
    return JSONResponse(
        _body(request, err.code, err.message), status_code=err.status, headers=err.headers
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every error into the JSON error shape."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return _json(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in exc.errors()
        ]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        message = f"invalid parameter {where}: {first['msg']}"
        body = _body(request, "invalid_parameter", message, details)
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            _body(request, code, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return _json(request, to_service_error(exc))


# gRPC status code names (``grpc.StatusCode`` members) for each HTTP status the service sends,
# as Triton's gRPC endpoint reports the same conditions. Used by ``service.grpc_v2.server``.
GRPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    499: "CANCELLED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def grpc_status_name(err: ServiceError) -> str:
    """The gRPC status code name for ``err`` (``INTERNAL`` for anything unlisted)."""
    return GRPC_STATUS.get(err.status, "INTERNAL")
