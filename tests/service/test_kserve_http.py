"""Unchanged tritonclient (KServe v2 HTTP) against the running server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton

from engines.model.preprocess import decode_image, letterbox
from tests.conftest import Server

pytestmark = pytest.mark.slow
MODEL = "yolov3-tiny-coco"


@pytest.fixture(scope="module")
def client(server_factory: Callable[..., Server]) -> triton.InferenceServerClient:
    # Raw float tensors are big (2 MB per 416x416 image, ~4x that as JSON text).
    server = server_factory({"DETECT_MAX_BODY_BYTES": str(64 * 1024 * 1024)})
    return triton.InferenceServerClient(server.url.removeprefix("http://"))


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
