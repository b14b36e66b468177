"""KServe v2 over gRPC (``inference.GRPCInferenceService``), served by ``grpc.aio`` on its own
port from the app's event loop, through the same ``service.flow`` and batchers as HTTP.

The v2 models are those of the HTTP endpoint (``service.api.v2_models``): ``NAME``,
``NAME.PRECISION`` (raw tensors) and ``NAME.detect`` (encoded images in, detections out).
API keys, when configured, go in metadata ``authorization: Bearer KEY`` or ``x-api-key``;
``x-request-id`` is taken or made and returned in the initial metadata.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np

from service import leases, request_id
from service.api.kserve_image import run_image_model
from service.api.v2_models import (
    IMAGE_INPUT,
    IMAGE_OUTPUTS,
    TensorRoute,
    V2Target,
    image_blobs,
    is_ready,
    metadata,
    precision_of,
    resolve_v2,
)
from service.config import Settings
from service.errors import BadRequest, Unauthorized, grpc_status_name, to_service_error
from service.flow import serve
from service.grpc_v2 import codec, repository
from service.grpc_v2 import grpc_predict_v2_pb2 as pb
from service.grpc_v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from service.metrics import Metrics
from service.model_control import ModelControl
from service.registry import ModelRegistry
from service.scheduler import DecodeBudget
from service.version import VERSION

log = logging.getLogger(__name__)
T = TypeVar("T")
Context = Any  # grpc.aio.ServicerContext (grpcio ships no type information)
EXTENSIONS = ["binary_tensor_data", "statistics", "model_repository"]  # as GET /v2 reports them


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        registry: ModelRegistry,
        settings: Settings,
        metrics: Metrics,
        decoding: DecodeBudget,
        control: ModelControl,
    ) -> None:
        self._registry = registry
        self._control = control
        self._settings = settings
        self._metrics = metrics
        self._decoding = decoding  # the app's decode budget, shared with the HTTP routes

    async def _call(
        self, context: Context, work: Callable[[], Awaitable[T]], *, health: bool = False
    ) -> T:
        """Request ID, API key, the model versions the call holds (``service.leases``), and
        every error as a gRPC status (never a stack trace)."""
        metadata = {k.lower(): v for k, v in context.invocation_metadata() or ()}
        rid = request_id.accept(_text(metadata.get(request_id.HEADER)))
        token = request_id.current.set(rid)
        await context.send_initial_metadata(((request_id.HEADER, rid),))
        try:
            if not health or self._settings.protect_health:
                self._check_key(metadata)
            with leases.request_scope():
                return await work()
        except Exception as exc:
            err = to_service_error(exc)
            if err.status >= 500:
                log.warning("gRPC request failed: %s", err.message)
            code = getattr(grpc.StatusCode, grpc_status_name(err))
            await context.abort(code, err.message)
            raise  # abort raises; this line is never reached
        finally:
            request_id.current.reset(token)

    def _check_key(self, metadata: dict[str, Any]) -> None:
        keys = self._settings.api_keys
        if not keys:
            return
        auth = _text(metadata.get("authorization")) or ""
        scheme, _, bearer = auth.partition(" ")
        presented = bearer.strip() if scheme.lower() == "bearer" else None
        presented = presented or _text(metadata.get("x-api-key"))
        if not presented:
            raise Unauthorized()
        matched = False
        for key in keys:  # no short-circuit: timing must not tell which key matched
            matched |= hmac.compare_digest(presented.encode(), key.encode())
        if not matched:
            raise Unauthorized()

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> Any:
        async def work() -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)

        return await self._call(context, work, health=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> Any:
        async def work() -> pb.ServerReadyResponse:
            ok, _ = self._registry.readiness()
            return pb.ServerReadyResponse(ready=ok and not self._registry.draining)

        return await self._call(context, work, health=True)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> Any:
        async def work() -> pb.ModelReadyResponse:
            target = self._target(request.name, request.version)
            return pb.ModelReadyResponse(ready=is_ready(target))

        return await self._call(context, work)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> Any:
        async def work() -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(
                name="detect-serve", version=VERSION, extensions=EXTENSIONS
            )

        return await self._call(context, work)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> Any:
        async def work() -> pb.ModelMetadataResponse:
            meta = metadata(self._target(request.name, request.version))
            response = pb.ModelMetadataResponse(
                name=meta["name"], versions=meta["versions"], platform=meta["platform"]
            )
            for kind in ("inputs", "outputs"):
                for t in meta[kind]:
                    getattr(response, kind).add(
                        name=t["name"], datatype=t["datatype"], shape=t["shape"]
                    )
            return response

        return await self._call(context, work)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> Any:
        async def work() -> pb.ModelInferResponse:
            target = self._target(request.model_name, request.model_version)
            response = await self._infer(target, request, self._deadline(context))
            response.model_version = str(target.model.version)  # the version that answered
            return response

        return await self._call(context, work)

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Context) -> Any:
        async def work() -> pb.ModelStatisticsResponse:
            return repository.model_statistics(self._registry, self._metrics, request)

        return await self._call(context, work)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Context) -> Any:
        async def work() -> pb.RepositoryIndexResponse:
            return repository.repository_index(self._control, request)

        return await self._call(context, work)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> Any:
        async def work() -> pb.RepositoryModelLoadResponse:
            return await repository.load(self._control, request)

        return await self._call(context, work)

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> Any:
        async def work() -> pb.RepositoryModelUnloadResponse:
            return await repository.unload(self._control, request)

        return await self._call(context, work)

    def _target(self, name: str, version: str = "") -> V2Target:
        return resolve_v2(self._registry, name, version or None)

    def _deadline(self, context: Context) -> float:
        budget = self._settings.default_deadline_ms / 1000
        remaining = context.time_remaining()  # the client's gRPC deadline, if it set one
        if remaining is not None:
            budget = min(budget, remaining)
        return time.monotonic() + budget

    async def _infer(
        self, target: V2Target, request: pb.ModelInferRequest, deadline: float
    ) -> pb.ModelInferResponse:
        params = codec.parameters(request.parameters)
        arrays = codec.decode_inputs(request)
        s = self._settings
        if target.image:
            names = codec.requested_outputs(request, [n for n, _, _ in IMAGE_OUTPUTS])
            if set(arrays) != {IMAGE_INPUT}:
                raise BadRequest(f"the image model takes one input, {IMAGE_INPUT!r} (BYTES)")
            blobs = image_blobs(arrays[IMAGE_INPUT], s.max_images_per_request)
            outputs, chosen = await run_image_model(
                target, blobs, params, s, self._metrics, self._decoding, deadline=deadline
            )
            return codec.encode_response(request, outputs, names, chosen)
        model = target.model
        names = codec.requested_outputs(request, [t.name for t in model.info.outputs])
        requested = target.precision or str(params.get("precision", "auto"))
        route = TensorRoute(model, arrays, s.max_images_per_request)
        result: dict[str, np.ndarray] = await serve(
            model, requested, route, deadline=deadline, metrics=self._metrics
        )
        variant = route.answered_by
        assert variant is not None  # serve() read the request, which records the variant
        chosen = {"precision": precision_of(model, variant), "backend": variant.engine.backend}
        return codec.encode_response(request, result, names, chosen)


def _text(value: str | bytes | None) -> str | None:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value


async def start_grpc_server(
    registry: ModelRegistry,
    settings: Settings,
    metrics: Metrics,
    decoding: DecodeBudget,
    control: ModelControl,
) -> grpc.aio.Server | None:
    """Bind and start the gRPC endpoint on ``settings.grpc_port`` (0: no gRPC endpoint; "any":
    a free port, named in the log line like uvicorn's for HTTP).

    A port that cannot be bound fails start-up: a configured endpoint that silently is not
    there would only surface as client timeouts.
    """
    if settings.grpc_port == 0:
        return None
    limit = settings.max_body_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", max(limit, 64 * 1024 * 1024)),
        ]
    )
    servicer = InferenceServicer(registry, settings, metrics, decoding, control)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    address = f"{settings.host}:{0 if settings.grpc_port == 'any' else settings.grpc_port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot bind the gRPC port {address}: {exc}") from exc
    if bound == 0:
        raise OSError(f"cannot bind the gRPC port {address}")
    await server.start()
    log.info("KServe v2 gRPC on %s:%d", settings.host, bound)
    return server
