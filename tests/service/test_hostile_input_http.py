"""The hostile-input corpus: every case gets its documented answer, never a 500."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import Server
from tests.service.test_bad_input_http import png_declaring

pytestmark = pytest.mark.slow


def encode(image: Image.Image, fmt: str, **save: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **save)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bus(photo: Callable[[str], bytes]) -> Image.Image:
    return Image.open(io.BytesIO(photo("bus"))).convert("RGB")


def corpus(bus: Image.Image) -> dict[str, bytes]:
    small = bus.resize((405, 540))
    gray16 = Image.fromarray(np.asarray(small.convert("L"), dtype=np.uint16) * 257)
    rgba = small.convert("RGBA")
    rgba.putalpha(200)
    frames = [small, small.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return {
        "1x1": encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"),
        "png16": encode(gray16, "PNG"),
        "grayscale": encode(small.convert("L"), "JPEG"),
        "rgba": encode(rgba, "PNG"),
        "palette": encode(small.convert("P"), "PNG"),
        "cmyk": encode(small.convert("CMYK"), "JPEG"),
        "gif_animated": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "webp_animated": encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
    }


@pytest.mark.parametrize(
    "name",
    ["1x1", "png16", "grayscale", "rgba", "palette", "cmyk", "gif_animated", "webp_animated"],
)
def test_valid_but_unusual_images_are_detected(server: Server, bus: Image.Image, name: str) -> None:
    data = corpus(bus)[name]
    with server.client() as client:
        r = client.post("/detect", files={"image": ("x", data)})
    assert r.status_code == 200, r.text
    body = r.json()
    if name == "1x1":
        assert (body["width"], body["height"]) == (1, 1)
        return
    assert (body["width"], body["height"]) == (405, 540)
    labels = {d["label"] for d in body["detections"]}
    assert "person" in labels or "bus" in labels, (name, body["detections"])


def test_exif_rotated_jpeg_boxes_are_in_the_orientation_the_user_sees(
    server: Server, bus: Image.Image
) -> None:
    stored = bus.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote: landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise -> portrait again
    data = encode(stored, "JPEG", exif=exif.tobytes())
    with server.client() as client:
        r = client.post("/detect", files={"image": ("rotated.jpg", data)})
    body = r.json()
    assert (body["width"], body["height"]) == (810, 1080), body
    buses = [d["box"] for d in body["detections"] if d["label"] == "bus"]
    assert buses and buses[0][2] - buses[0][0] > 550, body  # wide, as seen upright


def truncated_png(bus: Image.Image) -> bytes:
    data = encode(bus.resize((300, 400)), "PNG")
    return data[: len(data) // 2]


BAD_BODIES: list[tuple[str, dict[str, Any], int]] = [
    (
        "text as image/jpeg",
        {"content": b"hello world", "headers": {"content-type": "image/jpeg"}},
        400,
    ),
    (
        "wrong content type",
        {"content": b"{}", "headers": {"content-type": "text/plain"}},
        415,
    ),
    (
        "JSON without images",
        {"content": b"{}", "headers": {"content-type": "application/json"}},
        400,
    ),
    (
        "JSON image that is not base64",
        {
            "content": b'{"images": [{"base64": "%%%"}]}',
            "headers": {"content-type": "application/json"},
        },
        400,
    ),
    ("no content type", {"content": b"\x00\x01"}, 415),
    ("multipart without image", {"files": {"file": ("x", b"abc")}}, 400),
    ("huge declared png", {"files": {"image": ("x", png_declaring(100_000, 100_000))}}, 413),
]

BAD_PARAMS: list[tuple[str, dict[str, Any], int]] = [
    ("unicode model", {"model": "模型🚀"}, 404),
    ("path traversal model", {"model": "../../etc/passwd"}, 404),
    ("10 kB model name", {"model": "m" * 10_000}, 422),
    ("NaN conf", {"conf": "NaN"}, 422),
    ("inf iou", {"iou": "inf"}, 422),
    ("negative iou", {"iou": -1}, 422),
    ("huge conf", {"conf": 1e308}, 422),
    ("zero max_det", {"max_det": 0}, 422),
    ("negative max_det", {"max_det": -5}, 422),
    ("huge max_det", {"max_det": 10**12}, 422),
    ("non-numeric max_det", {"max_det": "lots"}, 422),
    ("unknown precision", {"precision": "int4"}, 422),
    ("negative deadline", {"deadline_ms": -1}, 422),
]


@pytest.mark.parametrize(("name", "kwargs", "status"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_hostile_bodies(
    server: Server, photo: Callable[[str], bytes], name: str, kwargs: dict[str, Any], status: int
) -> None:
    with server.client() as client:
        r = client.post("/detect", **kwargs)
        assert r.status_code == status, r.text
        assert r.json()["error"]["message"]
        assert client.post("/detect", files={"image": ("b", photo("bus"))}).status_code == 200


def test_truncated_png(server: Server, bus: Image.Image) -> None:
    with server.client() as client:
        r = client.post("/detect", files={"image": ("x", truncated_png(bus))})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_image", r.text


@pytest.mark.parametrize(("name", "params", "status"), BAD_PARAMS, ids=[c[0] for c in BAD_PARAMS])
def test_hostile_parameters(
    server: Server, photo: Callable[[str], bytes], name: str, params: dict[str, Any], status: int
) -> None:
    with server.client() as client:
        r = client.post("/detect", files={"image": ("c", photo("coffee"))}, params=params)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and "Traceback" not in error["message"]
    # A traversal-looking name is just an unknown model (nothing was looked up on disk) ...
    assert error["code"] == {404: "model_not_found", 422: "invalid_parameter"}[status], error
    # ... and what the client sent is never echoed back beyond a short, quoted prefix.
    for sent in map(str, params.values()):
        assert len(sent) <= 64 or sent not in error["message"], error["message"]


def test_too_many_images_in_one_request(server: Server) -> None:
    small = encode(Image.new("RGB", (32, 32), (1, 2, 3)), "JPEG")
    files = [("image", (f"c{i}", small)) for i in range(17)]
    with server.client() as client:
        r = client.post("/detect", files=files)
    assert r.status_code == 400 and "limit" in r.json()["error"]["message"], r.text
