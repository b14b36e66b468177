"""``/detect`` conveniences: JSON bodies with base64 images or image URLs, the annotated-image
reply, and the versioned response shape.

JSON body (``Content-Type: application/json``)::

    {"images": [{"base64": "<standard base64>"}, {"url": "https://host/photo.jpg"}]}

Response shapes: ``?v=2`` (or ``Accept: application/vnd.detect-serve.v2+json``) always answers
``{"api_version": 2, ..., "results": [ ... one per image ... ]}``. Without it the original shape
is kept (one image inline, several under ``results``) and marked ``Deprecation: true``.
``?format=image`` (JPEG; or ``format=png``) answers the single photo with its boxes drawn.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Literal

from fastapi import Request, Response
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from engines.model.annotate import MEDIA_TYPES, annotate
from service.config import Settings
from service.errors import BadRequest
from service.schemas import DetectResponse, ImageResult
from service.url_fetch import fetch_image

V2_MEDIA_TYPE = "application/vnd.detect-serve.v2+json"
ReplyFormat = Literal["json", "image", "jpeg", "png"]
_PHOTO = {"schema": {"type": "string", "format": "binary"}}
# The 200 replies besides the (deprecated) default JSON, for the OpenAPI document.
OTHER_REPLIES: dict[str, Any] = {
    "description": "Detections (JSON; `v=2`: always a `results` list), or with `format=image|png`"
    " the photo with its boxes drawn",
    "content": {
        V2_MEDIA_TYPE: {
            "schema": {
                "type": "object",
                "required": ["api_version", "results"],
                "properties": {
                    "api_version": {"type": "integer", "enum": [2]},
                    "results": {"type": "array", "items": {"type": "object"}},
                },
            }
        },
        "image/jpeg": _PHOTO,
        "image/png": _PHOTO,
    },
}


class DetectResponseV2(DetectResponse):
    """The stable shape: every image's result under ``results``, whatever the count."""

    api_version: int = Field(2, examples=[2])
    results: list[ImageResult] | None = None


async def read_json_images(request: Request, settings: Settings, max_images: int) -> list[bytes]:
    """``{"images": [{"base64": ...} | {"url": ...}, ...]}`` -> image bytes, in order."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise BadRequest("malformed JSON body") from None
    items = body.get("images") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        raise BadRequest('JSON body needs "images": [{"base64": ...} or {"url": ...}, ...]')
    if len(items) > max_images:
        raise BadRequest(f"{len(items)} images in one request; the limit is {max_images}")
    blobs = []
    for i, item in enumerate(items):
        if (
            not isinstance(item, dict)
            or len(item) != 1
            or not isinstance(next(iter(item.values())), str)
        ):
            raise BadRequest(f'images[{i}] must be {{"base64": "..."}} or {{"url": "..."}}')
        if "base64" in item:
            try:
                blobs.append(base64.b64decode(item["base64"], validate=True))
            except (binascii.Error, ValueError):
                raise BadRequest(f"images[{i}] is not valid base64") from None
        elif "url" in item:
            blobs.append(await run_in_threadpool(fetch_image, item["url"], settings))
        else:
            raise BadRequest(f'images[{i}] must be {{"base64": "..."}} or {{"url": "..."}}')
    return blobs


def wants_v2(request: Request, version: int | None) -> bool:
    return version == 2 or V2_MEDIA_TYPE in request.headers.get("accept", "")


async def reply(
    request: Request,
    body: DetectResponse,
    blobs: list[bytes],
    *,
    fmt: ReplyFormat,
    version: int | None,
    settings: Settings,
    headers: dict[str, str],
) -> Response:
    """The response in the shape and format the client asked for."""
    if fmt != "json":
        return await _annotated(body, blobs, "png" if fmt == "png" else "jpeg", settings, headers)
    if wants_v2(request, version):
        results = body.results or [
            ImageResult(
                width=body.width or 0,
                height=body.height or 0,
                detections=body.detections or [],
                timing_ms=body.timing_ms,
                batch_size=body.batch_size or 1,
            )
        ]
        v2 = DetectResponseV2(
            model=body.model,
            precision=body.precision,
            backend=body.backend,
            device=body.device,
            results=results,
        )
        return Response(
            v2.model_dump_json(exclude_none=True), headers=headers, media_type=V2_MEDIA_TYPE
        )
    deprecated = {**headers, "Deprecation": "true", "Link": '</docs>; rel="deprecation"'}
    # Serialised once, by pydantic's compiled serialiser: returning the model would have FastAPI
    # validate it again against ``response_model`` (which stays for the OpenAPI schema).
    return Response(
        body.model_dump_json(exclude_none=True), media_type="application/json", headers=deprecated
    )


async def _annotated(
    body: DetectResponse,
    blobs: list[bytes],
    fmt: Literal["jpeg", "png"],
    settings: Settings,
    headers: dict[str, str],
) -> Response:
    if len(blobs) != 1 or body.detections is None:
        raise BadRequest("format=image answers one image per request")
    dets = body.detections
    encoded = await run_in_threadpool(
        lambda: annotate(
            blobs[0],
            [d.box for d in dets],
            [d.label for d in dets],
            [d.score for d in dets],
            [d.class_id for d in dets],
            max_pixels=settings.max_pixels,
            fmt=fmt,
        )
    )
    summary: dict[str, Any] = {"X-Detections": str(len(dets))}
    return Response(encoded, media_type=MEDIA_TYPES[fmt], headers={**headers, **summary})
