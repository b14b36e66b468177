"""Bad input gets a clear 4xx JSON error and the server keeps serving."""

from __future__ import annotations

import io
import re
import socket
import struct
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image

from tests.conftest import Server

pytestmark = pytest.mark.slow


def png_declaring(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header declares a huge size (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg(width: int = 64, height: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 200)).save(buf, "JPEG")
    return buf.getvalue()


def assert_error(status: int, body: dict[str, Any], expected: int, code: str | None = None) -> None:
    assert status == expected, body
    assert set(body) == {"error"} and body["error"]["message"], body
    if code is not None:
        assert body["error"]["code"] == code, body


CASES: list[tuple[str, dict[str, Any], int, str | None]] = [
    ("empty multipart image", {"files": {"image": ("x", b"")}}, 400, "bad_request"),
    ("empty raw body", {"content": b"", "headers": {"content-type": "image/jpeg"}}, 400, None),
    (
        "non-image bytes",
        {"files": {"image": ("x", b"this is not an image" * 10)}},
        400,
        "invalid_image",
    ),
    ("truncated jpeg", {"files": {"image": ("x", jpeg(640, 480)[:700])}}, 400, "invalid_image"),
    (
        "declares 20000x20000",
        {"files": {"image": ("x", png_declaring(20000, 20000))}},
        413,
        "image_too_large",
    ),
    (
        "unknown model",
        {"files": {"image": ("x", jpeg())}, "params": {"model": "nope"}},
        404,
        "model_not_found",
    ),
    (
        "conf above 1",
        {"files": {"image": ("x", jpeg())}, "params": {"conf": 1.5}},
        422,
        "invalid_parameter",
    ),
    ("conf negative", {"files": {"image": ("x", jpeg())}, "params": {"conf": -0.1}}, 422, None),
    ("conf NaN", {"files": {"image": ("x", jpeg())}, "params": {"conf": "nan"}}, 422, None),
    (
        "unknown precision",
        {"files": {"image": ("x", jpeg())}, "params": {"precision": "bf16"}},
        422,
        None,
    ),
    (
        "unbuilt precision",
        {"files": {"image": ("x", jpeg())}, "params": {"precision": "int8"}},
        400,
        "precision_unavailable",
    ),
    (
        "unknown class",
        {"files": {"image": ("x", jpeg())}, "params": {"classes": "unicorn"}},
        400,
        None,
    ),
    ("multipart without image", {"files": {"picture": ("x", jpeg())}}, 400, "bad_request"),
    (
        "text content type",
        {"content": b"hello", "headers": {"content-type": "text/plain"}},
        415,
        "unsupported_media_type",
    ),
    (
        "body over byte limit",
        {"content": b"\xff" * (5 * 1024 * 1024), "headers": {"content-type": "image/jpeg"}},
        413,
        "payload_too_large",
    ),
]


@pytest.mark.parametrize(
    ("name", "request_kwargs", "status", "code"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input_is_a_clear_4xx_and_server_keeps_serving(
    server: Server,
    photo: Callable[[str], bytes],
    name: str,
    request_kwargs: dict[str, Any],
    status: int,
    code: str | None,
) -> None:
    with server.client() as client:
        r = client.post("/detect", **request_kwargs)
        assert_error(r.status_code, r.json(), status, code)
        good = client.post("/detect", files={"image": ("bus", photo("bus"))})
    assert good.status_code == 200 and good.json()["detections"], good.text


def _read_http_response(sock: socket.socket) -> bytes:
    """Read one response: headers and body may arrive in separate TCP segments."""
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if match and len(body) >= int(match.group(1)):
                return data
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:  # the server may reset once it has answered
            return data
        if not chunk:
            return data
        data += chunk


def test_oversized_body_refused_without_reading_it(server: Server) -> None:
    """Declare 1 GB, send 1 KB: the 413 must come back without the rest of the body.

    The rest is never sent, so a server that waited for it would never answer (the socket's
    timeout would fail the test): no clock needed.
    """
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(
            b"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 1000000000\r\n\r\n" + b"\xff" * 1024
        )
        reply = _read_http_response(sock).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413"), reply
    assert '"payload_too_large"' in reply
