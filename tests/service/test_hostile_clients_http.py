"""Issue 14, findings 1, 4, 5 and 9: hostile bodies against the real server, never a 5xx."""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import Server
from tests.service.test_decode_budget import jpeg_claiming, png_bomb

pytestmark = pytest.mark.slow
V2 = "/v2/models/yolov3-tiny-coco/infer"
GiB = 1024**3


def strict_json(text: str) -> Any:
    """JSON as the RFC has it: NaN and Infinity are not JSON."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} in a JSON reply")

    return json.loads(text, parse_constant=refuse)


# -- 1: cheap inputs that cost a lot --------------------------------------------------------


def test_sixteen_requests_of_four_one_pixel_wide_bombs_are_refused_cheaply(server: Server) -> None:
    bomb = png_bomb(1, 39_999_999)  # 76 KiB; took 9-14 s and ~1 GiB each to decode
    rss_before = server.rss_bytes()

    def attack(_: int) -> httpx.Response:
        files = [("image", ("a.png", bomb))] * 4
        return httpx.post(f"{server.url}/detect", files=files, timeout=120)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(attack, range(16)))
    for r in answers:
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "image_too_large"
        assert "no side may exceed" in r.json()["error"]["message"]
    assert server.rss_bytes() - rss_before < GiB // 2


def test_an_image_needing_more_decode_memory_than_the_budget_is_413(
    server_factory: Callable[..., Server],
) -> None:
    small_budget = server_factory({"DETECT_DECODE_MEMORY_BYTES": str(8 * 1024 * 1024)})
    deep = png_bomb(1000, 1000, depth=16, colour=2)  # 1 MP: ~20 MiB to decode and letterbox
    r = httpx.post(f"{small_budget.url}/detect", files={"image": ("d.png", deep)}, timeout=60)
    assert r.status_code == 413 and "MiB to decode" in r.json()["error"]["message"], r.text
    tiny = png_bomb(64, 64)
    ok = httpx.post(f"{small_budget.url}/detect", files={"image": ("t.png", tiny)}, timeout=60)
    assert ok.status_code == 200, ok.text


def test_a_client_deadline_that_cannot_be_met_is_504_with_retry_after(server: Server) -> None:
    big = png_bomb(6000, 6000, colour=2)  # 36 MP: decoding alone takes longer than 1 ms
    with server.client() as client:
        r = client.post("/detect", files={"image": ("b.png", big)}, params={"deadline_ms": 1})
    assert r.status_code == 504 and "Retry-After" in r.headers, r.text
    assert r.json()["error"]["message"].startswith("deadline cannot be met")


# -- 4: v2 bodies that gave 500 --------------------------------------------------------------

DEEP = "[" * 100_000
V2_BODIES = [
    '{"inputs":[1]}',
    '{"inputs":["a"]}',
    '{"inputs":[null]}',
    '{"inputs":[[1,2]]}',
    DEEP,
    '{"inputs":' + DEEP,
    '{"parameters":[1],"inputs":[{"name":"images","datatype":"FP32","shape":[1],"data":[1]}]}',
    '{"parameters":"x","inputs":[{"name":"images","datatype":"FP32","shape":[1],"data":[1]}]}',
    '{"inputs":[{"name":"images","datatype":"FP32","shape":[1],"data":[1],"parameters":[1]}]}',
    '{"inputs":[{"name":"images","datatype":"FP32","shape":[1],"data":[1],"parameters":"s"}]}',
    '{"outputs":5,"inputs":[{"name":"images","datatype":"FP32","shape":[1],"data":[1]}]}',
    '{"outputs":["output0"],"inputs":[{"name":"images","datatype":"FP32","shape":[1],"data":[1]}]}',
    '{"outputs":[{"name":"output0","parameters":[1]}],'
    '"inputs":[{"name":"images","datatype":"FP32","shape":[1],"data":[1]}]}',
    '{"inputs":[{"name":"images","datatype":"FP32","shape":[1],'
    '"parameters":{"binary_data_size":1e999}}]}',
    '{"inputs":[{"name":"images","datatype":"FP32","shape":[1e999],"data":[1]}]}',
    '{"inputs":[{"name":"images","datatype":"FP32","shape":[1],"data":[NaN]}]}',
    '{"inputs":[{"name":"images","datatype":"FP32","shape":[1],"data":[1e999]}]}',
    '{"inputs":[{"name":"images","datatype":"FP32","shape":[99999999999],"data":[1]}]}',
    '{"inputs":[{"name":"images","datatype":"FP32","shape":[2],"data":[1,null]}]}',
    '{"inputs":[{"name":"images","datatype":"FP32","shape":[2],"data":["1","2"]}]}',
    '{"inputs":[{"name":"images","datatype":"FP32","shape":[2,1],"data":[[1],[2,3]]}]}',
]


@pytest.mark.parametrize("body", V2_BODIES, ids=[b[:60] for b in V2_BODIES])
def test_malformed_v2_bodies_are_400_in_the_v2_shape(server: Server, body: str) -> None:
    with server.client() as client:
        r = client.post(V2, content=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert isinstance(error, str) and error and "Traceback" not in error


def binary_request(tensor: np.ndarray, declared: int, **outputs: object) -> tuple[bytes, str]:
    head = {
        "inputs": [
            {
                "name": "images",
                "datatype": "FP32",
                "shape": list(tensor.shape),
                "parameters": {"binary_data_size": declared},
            }
        ],
        **outputs,
    }
    header = json.dumps(head).encode()
    return header + tensor.tobytes(), str(len(header))


def test_binary_data_size_must_match_the_data_sent(server: Server) -> None:
    tensor = np.zeros((1, 3, 416, 416), np.float32)
    with server.client() as client:
        for declared in (tensor.nbytes + 4, tensor.nbytes - 4):
            body, length = binary_request(tensor, declared)
            r = client.post(V2, content=body, headers={"Inference-Header-Content-Length": length})
            assert r.status_code == 400 and "binary_data_size" in r.json()["error"], r.text


def test_non_finite_outputs_are_null_so_the_reply_is_valid_json(server: Server) -> None:
    tensor = np.full((1, 3, 416, 416), np.nan, np.float32)  # NaN in, NaN out of every conv
    body, length = binary_request(tensor, tensor.nbytes)
    with server.client() as client:
        r = client.post(V2, content=body, headers={"Inference-Header-Content-Length": length})
    assert r.status_code == 200, r.text[:300]
    data = strict_json(r.text)["outputs"][0]["data"]
    assert None in data and not any(isinstance(v, float) and not math.isfinite(v) for v in data)


# -- 5: chunked /detect body over the limit ---------------------------------------------------


def test_a_chunked_body_over_the_limit_is_413(server: Server) -> None:
    def chunks() -> Any:
        for _ in range(6):  # 6 MB against the fixture's 4 MiB limit, no Content-Length
            yield b"\0" * 1_000_000

    with server.client() as client:
        r = client.post("/detect", content=chunks(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large", r.text


# -- 9: smaller findings ----------------------------------------------------------------------


def test_a_jpeg_whose_header_promises_more_than_its_data_is_refused(server: Server) -> None:
    with server.client() as client:
        r = client.post("/detect", files={"image": ("t.jpg", jpeg_claiming(6000, 6000, 25_000))})
    assert r.status_code == 400 and "truncated" in r.json()["error"]["message"], r.text


@pytest.mark.parametrize("token", ["٣", "²", "３"])
def test_class_ids_are_ascii_digits_with_our_own_message(
    server: Server, photo: Callable[[str], bytes], token: str
) -> None:
    with server.client() as client:
        r = client.post(
            "/detect", files={"image": ("c", photo("coffee"))}, params={"classes": token}
        )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"] == f"unknown class {token!r}"


@pytest.fixture(scope="module")
def keyed(server_factory: Callable[..., Server]) -> Server:
    return server_factory({"DETECT_API_KEYS": '["s3cret"]', "DETECT_MAX_BODY_BYTES": "65536"})


@pytest.mark.parametrize("path", ["/docs", "/openapi.json", "/redoc", "/v2"])
def test_docs_and_v2_metadata_need_the_key(keyed: Server, path: str) -> None:
    with keyed.client() as client:
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"X-API-Key": "s3cret"}).status_code == 200


def test_docs_stay_open_when_configured(server_factory: Callable[..., Server]) -> None:
    open_docs = server_factory({"DETECT_API_KEYS": '["k"]', "DETECT_PROTECT_DOCS": "false"})
    assert httpx.get(f"{open_docs.url}/openapi.json").status_code == 200


def test_authentication_comes_before_limits(keyed: Server) -> None:
    """An unauthenticated client cannot probe the body limit: 401 before 413."""
    port = int(keyed.url.rsplit(":", 1)[1])
    head = (
        b"POST /detect HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: 10000000\r\n\r\n"
    )
    for key, status in ((b"", b" 401 "), (b"X-API-Key: s3cret\r\n", b" 413 ")):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(head[:-2] + key + b"\r\n")  # headers only: the body never comes
            assert status in sock.recv(4096).split(b"\r\n")[0]
