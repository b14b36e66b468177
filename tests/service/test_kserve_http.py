"""Unchanged tritonclient (KServe v2 HTTP) against the running server."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton

from engines.model.preprocess import decode_image, letterbox
from tests.conftest import Server

pytestmark = pytest.mark.slow
MODEL = "yolov3-tiny-coco"


@pytest.fixture(scope="module")
def v2_server(server_factory: Callable[..., Server]) -> Server:
    # Raw float tensors are big (2 MB per 416x416 image, ~4x that as JSON text); parsing that
    # much JSON on a loaded machine can outlast the default 10 s deadline, which is not tested here.
    return server_factory(
        {"DETECT_MAX_BODY_BYTES": str(64 * 1024 * 1024), "DETECT_DEFAULT_DEADLINE_MS": "600000"}
    )


@pytest.fixture(scope="module")
def client(v2_server: Server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(v2_server.url.removeprefix("http://"))


@pytest.fixture(scope="module")
def batch(photo: Callable[[str], bytes]) -> np.ndarray:
    tensors = [
        letterbox(decode_image(photo(name), max_pixels=10**8), (416, 416))[0]
        for name in ("bus", "coffee", "zidane")
    ]
    return np.stack(tensors).astype(np.float32)


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(f"{MODEL}.fp32")
    meta = client.get_model_metadata(MODEL)
    assert meta["inputs"][0]["shape"] == [-1, 3, 416, 416]
    assert meta["outputs"][0]["name"] == "output0"
    config = client.get_model_config(MODEL)
    assert config["max_batch_size"] >= 1 and config["input"][0]["dims"] == [3, 416, 416]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_matches_onnxruntime(
    client: triton.InferenceServerClient,
    batch: np.ndarray,
    default_model_source: Path,
    binary: bool,
) -> None:
    inp = triton.InferInput("images", list(batch.shape), "FP32")
    inp.set_data_from_numpy(batch, binary_data=binary)
    out = triton.InferRequestedOutput("output0", binary_data=binary)
    result = client.infer(f"{MODEL}.fp32", [inp], outputs=[out])
    got = result.as_numpy("output0")
    session = ort.InferenceSession(str(default_model_source), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"images": batch})[0]
    assert got.shape == expected.shape == (3, 2535, 85)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)
    assert result.get_response()["parameters"]["precision"] == "fp32"


def test_unknown_model_and_bad_tensor_are_client_errors(
    client: triton.InferenceServerClient,
) -> None:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException):
        client.get_model_metadata("no-such-model")
    wrong = triton.InferInput("images", [1, 3, 10, 10], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 10, 10), np.float32))
    with pytest.raises(InferenceServerException, match="expected input"):
        client.infer(MODEL, [wrong])


def raw_infer(server: Server, batch: np.ndarray, **request: Any) -> httpx.Response:
    """A v2 request by hand (binary input), so the reply's bytes can be checked as sent."""
    raw = batch.astype("<f4").tobytes()
    inputs = [
        {
            "name": "images",
            "datatype": "FP32",
            "shape": list(batch.shape),
            "parameters": {"binary_data_size": len(raw)},
        }
    ]
    head = json.dumps({"inputs": inputs, **request}).encode()
    reply = httpx.post(
        f"{server.url}/v2/models/{MODEL}.fp32/infer",
        content=head + raw,
        headers={"Inference-Header-Content-Length": str(len(head))},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    return reply


@pytest.mark.parametrize(
    "request_",
    [
        {"outputs": [{"name": "output0", "parameters": {"binary_data": True}}]},
        {"parameters": {"binary_data_output": True}},
    ],
    ids=["per-output", "whole-request"],
)
def test_binary_outputs_are_sent_as_raw_bytes(
    v2_server: Server, batch: np.ndarray, request_: dict[str, Any]
) -> None:
    one = batch[:1]
    as_json = raw_infer(v2_server, one)
    assert as_json.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in as_json.headers
    (expected,) = as_json.json()["outputs"]
    reply = raw_infer(v2_server, one, **request_)
    assert reply.headers["content-type"] == "application/octet-stream"
    head_length = int(reply.headers["inference-header-content-length"])
    header = json.loads(reply.content[:head_length])
    (output,) = header["outputs"]
    assert "data" not in output and output["shape"] == [1, 2535, 85]
    size = 1 * 2535 * 85 * 4  # FP32
    assert output["parameters"]["binary_data_size"] == size
    assert len(reply.content) == head_length + size  # the tensor follows the header, nothing else
    got = np.frombuffer(reply.content[head_length:], dtype="<f4").reshape(output["shape"])
    np.testing.assert_array_equal(got.ravel(), np.asarray(expected["data"], np.float32))
