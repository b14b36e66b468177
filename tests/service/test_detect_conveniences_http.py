"""``/detect`` conveniences against the running server: base64 and URL JSON bodies, the
annotated image, the versioned shape, request IDs in responses and logs, process metrics."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image

from tests.conftest import Server

pytestmark = pytest.mark.slow
BIG = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def photo_server(photo: Callable[[str], bytes]) -> Iterator[str]:
    """A local HTTP server: /bus.jpg, /redirect (to the bus), /big (over the fetch limit)."""
    bus = photo("bus")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/bus.jpg")
                self.end_headers()
                return
            body = bus if self.path == "/bus.jpg" else b"\0" * BIG
            self.send_response(200 if self.path in ("/bus.jpg", "/big") else 404)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def server(server_factory: Callable[..., Server]) -> Server:
    return server_factory(
        {
            "DETECT_URL_FETCH_HOSTS": json.dumps(["127.0.0.1"]),
            "DETECT_URL_ALLOW_PRIVATE_HOSTS": json.dumps(["127.0.0.1"]),
            "DETECT_URL_FETCH_MAX_BYTES": str(BIG // 2),
        }
    )


def _multipart(server: Server, blob: bytes, **params: Any) -> Any:
    with server.client() as client:
        r = client.post("/detect", params=params, files={"image": ("a.jpg", blob, "image/jpeg")})
    assert r.status_code == 200, r.text
    return r


def _json(server: Server, images: list[dict[str, str]], **params: Any) -> Any:
    with server.client() as client:
        return client.post("/detect", params=params, json={"images": images})


def test_base64_body_gives_the_multipart_detections(
    server: Server, photo: Callable[[str], bytes]
) -> None:
    bus, zidane = photo("bus"), photo("zidane")
    encoded = [{"base64": base64.b64encode(b).decode()} for b in (bus, zidane)]
    r = _json(server, encoded)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert results[0]["detections"] == _multipart(server, bus).json()["detections"]
    assert results[1]["detections"] == _multipart(server, zidane).json()["detections"]
    bad = _json(server, [{"base64": "not base64!"}])
    assert bad.status_code == 400 and "base64" in bad.json()["error"]["message"]


def test_url_input_from_an_allowlisted_local_server(
    server: Server, photo_server: str, photo: Callable[[str], bytes]
) -> None:
    r = _json(server, [{"url": f"{photo_server}/bus.jpg"}])
    assert r.status_code == 200, r.text
    assert r.json()["detections"] == _multipart(server, photo("bus")).json()["detections"]
    redirect = _json(server, [{"url": f"{photo_server}/redirect"}])
    assert redirect.status_code == 400 and "redirect" in redirect.json()["error"]["message"]
    big = _json(server, [{"url": f"{photo_server}/big"}])
    assert big.status_code == 413
    port = photo_server.rsplit(":", 1)[1]
    unlisted = _json(server, [{"url": f"http://localhost:{port}/bus.jpg"}])
    assert unlisted.status_code == 400 and "url_fetch_hosts" in unlisted.json()["error"]["message"]


def test_url_input_is_off_by_default(server_factory: Callable[..., Server]) -> None:
    plain = server_factory()
    r = _json(plain, [{"url": "http://127.0.0.1:9/bus.jpg"}])
    assert r.status_code == 400 and "disabled" in r.json()["error"]["message"]


@pytest.mark.parametrize(("fmt", "kind"), [("image", "JPEG"), ("png", "PNG")])
def test_annotated_image_decodes_at_the_photo_size(
    server: Server, photo: Callable[[str], bytes], fmt: str, kind: str
) -> None:
    bus = photo("bus")
    r = _multipart(server, bus, format=fmt)
    assert r.headers["content-type"] == f"image/{kind.lower()}"
    annotated = Image.open(io.BytesIO(r.content))
    assert annotated.format == kind
    assert annotated.size == Image.open(io.BytesIO(bus)).size == (810, 1080)
    assert int(r.headers["x-detections"]) > 0
    # Boxes were drawn: the annotated photo differs from a plain re-encode of the original.
    plain = Image.open(io.BytesIO(bus)).convert("RGB")
    assert annotated.convert("RGB").tobytes() != plain.tobytes()


def test_versioned_shape_and_deprecation(server: Server, photo: Callable[[str], bytes]) -> None:
    old = _multipart(server, photo("bus"))
    assert old.headers["deprecation"] == "true" and "detections" in old.json()
    new = _multipart(server, photo("bus"), v=2)
    body = new.json()
    assert "deprecation" not in new.headers
    assert body["api_version"] == 2 and len(body["results"]) == 1
    assert body["results"][0]["detections"] == old.json()["detections"]
    with server.client() as client:
        accept = client.post(
            "/detect",
            files={"image": ("a.jpg", photo("bus"), "image/jpeg")},
            headers={"Accept": "application/vnd.detect-serve.v2+json"},
        )
    assert accept.json()["api_version"] == 2


def test_request_id_echoed_and_logged(server: Server, photo: Callable[[str], bytes]) -> None:
    with server.client() as client:
        given = client.post(
            "/detect",
            files={"image": ("a.jpg", photo("bus"), "image/jpeg")},
            headers={"X-Request-ID": "test-req-42"},
        )
        made = client.post("/detect", content=b"junk", headers={"content-type": "image/jpeg"})
        hostile = client.get("/health/live", headers={"X-Request-ID": "bad id\twith spaces"})
    assert given.headers["x-request-id"] == "test-req-42"
    assert made.status_code == 400
    assert made.json()["error"]["request_id"] == made.headers["x-request-id"]
    assert hostile.headers["x-request-id"] != "bad id\twith spaces"
    log = server.log()
    assert any("test-req-42" in line and "POST /detect 200" in line for line in log.splitlines())
    assert made.headers["x-request-id"] in log


def test_process_metrics_exported(server: Server) -> None:
    with server.client() as client:
        text = client.get("/metrics").text
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "python_info"):
        assert name in text
