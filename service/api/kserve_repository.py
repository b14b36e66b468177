"""The KServe v2 / Triton repository extension over HTTP (``service.model_control``):

- ``POST /v2/repository/index``: every model in the model repository, served or not, with its
  version, state (``READY``, ``UNAVAILABLE``, ``LOADING``, ``UNLOADING``) and the reason; body
  ``{}`` or ``{"ready": true}`` (only the ready ones).
- ``POST /v2/repository/models/NAME/load``: load ``NAME``, or reload it as a new version (after
  ``detect-serve build``); answered once the new version serves.
- ``POST /v2/repository/models/NAME/unload``: stop serving ``NAME``; answered once every request
  it had accepted has been answered.

Load and unload need ``DETECT_MODEL_CONTROL=true`` (403 otherwise); every route needs an API key
when keys are set.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.deps import AuthDep
from service.errors import BadRequest
from service.model_control import ModelControl, ready_only_flag
from service.schemas import error_responses

router = APIRouter(prefix="/v2/repository", tags=["kserve-v2"], dependencies=[AuthDep])
# Load takes Triton's optional {"parameters": {...}}; none of its parameters (an inline config,
# model files) is supported, and a request that sets one is refused rather than half-honoured.
MAX_CONTROL_BODY = 64 * 1024
CONTROL_ERRORS = error_responses(
    {
        400: "the load failed (the reason; a served version keeps serving), or a bad body",
        403: "model control is off (DETECT_MODEL_CONTROL)",
        404: "no such model in the model repository",
    }
)


def _control(request: Request) -> ModelControl:
    control: ModelControl = request.app.state.model_control
    return control


async def _json_body(request: Request) -> Any:
    body = await request.body()
    if len(body) > MAX_CONTROL_BODY:
        raise BadRequest(f"request body over {MAX_CONTROL_BODY} bytes")
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the request body is not JSON") from None


@router.post("/index", summary="v2 repository index: every model, served or not")
async def repository_index(request: Request) -> list[dict[str, str]]:
    ready_only = ready_only_flag(await _json_body(request))
    return [asdict(e) for e in _control(request).index(ready_only)]


@router.post(
    "/models/{model_name}/load",
    summary="Load, or reload as a new version, a model",
    responses=CONTROL_ERRORS,
)
async def load_model(model_name: str, request: Request) -> JSONResponse:
    control = _control(request)
    control.check_allowed()
    body = await _json_body(request)
    if body is not None and (not isinstance(body, dict) or body.get("parameters")):
        raise BadRequest("load parameters (config, files) are not supported; send {} or nothing")
    model = await control.load(model_name)
    return JSONResponse({"name": model.name, "version": str(model.version), "state": "READY"})


@router.post(
    "/models/{model_name}/unload",
    summary="Unload a model (after its requests finish)",
    responses=CONTROL_ERRORS,
)
async def unload_model(model_name: str, request: Request) -> JSONResponse:
    control = _control(request)
    control.check_allowed()
    await _json_body(request)  # Triton's optional {"parameters": {"unload_dependents": ...}}
    await control.unload(model_name)
    return JSONResponse({"name": model_name, "state": "UNAVAILABLE"})
