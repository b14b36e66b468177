"""Unchanged ``tritonclient.grpc`` (KServe v2 gRPC) against the running server, the image-in
model over gRPC and HTTP against ``/detect``, and the v2 statistics extension."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from engines.model.preprocess import decode_image, letterbox
from tests.conftest import REPO, Server

pytestmark = pytest.mark.slow
MODEL = "yolov3-tiny-coco"
PHOTOS = ("bus", "zidane")


@pytest.fixture(scope="module")
def served(server_factory: Callable[..., Server]) -> tuple[Server, str]:
    server = server_factory(
        {"DETECT_GRPC_PORT": "any", "DETECT_MAX_BODY_BYTES": str(64 * 1024 * 1024)}
    )
    return server, server.grpc_address()


@pytest.fixture(scope="module")
def grpc(served: tuple[Server, str]) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(served[1])


@pytest.fixture(scope="module")
def images(photo: Callable[[str], bytes]) -> np.ndarray:
    return np.array([photo(name) for name in PHOTOS], dtype=object)


def test_health_and_metadata(grpc: grpcclient.InferenceServerClient) -> None:
    assert grpc.is_server_live() and grpc.is_server_ready()
    assert grpc.is_model_ready(MODEL) and grpc.is_model_ready(f"{MODEL}.fp32")
    assert grpc.is_model_ready(f"{MODEL}.detect")
    server = grpc.get_server_metadata(as_json=True)
    assert server["name"] == "detect-serve" and server["version"] not in ("", "2")
    meta = grpc.get_model_metadata(MODEL, as_json=True)
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"][0]["shape"] == ["-1", "3", "416", "416"]  # int64 as JSON text
    image = grpc.get_model_metadata(f"{MODEL}.detect", as_json=True)
    assert [t["name"] for t in image["outputs"]] == [
        "boxes",
        "scores",
        "classes",
        "labels",
        "count",
    ]
    assert image["inputs"][0]["datatype"] == "BYTES"


def test_unknown_model_and_unbuilt_variant_are_not_found(
    grpc: grpcclient.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException, match="NOT_FOUND"):
        grpc.get_model_metadata("no-such-model")
    # The session's server serves the source as FP32 only: INT8 was never built.
    with pytest.raises(InferenceServerException, match="NOT_FOUND"):
        grpc.is_model_ready(f"{MODEL}.int8")


def test_raw_infer_matches_onnxruntime(
    grpc: grpcclient.InferenceServerClient,
    photo: Callable[[str], bytes],
    default_model_source: Path,
) -> None:
    batch = np.stack(
        [letterbox(decode_image(photo(n), max_pixels=10**8), (416, 416))[0] for n in PHOTOS]
    ).astype(np.float32)
    tensor = grpcclient.InferInput("images", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    result = grpc.infer(f"{MODEL}.fp32", [tensor])
    got = result.as_numpy("output0")
    session = ort.InferenceSession(str(default_model_source), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"images": batch})[0]
    assert got.shape == expected.shape == (2, 2535, 85)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)
    params = result.get_response(as_json=True)["parameters"]
    assert params["precision"]["string_param"] == "fp32"


def test_bad_tensor_is_invalid_argument(grpc: grpcclient.InferenceServerClient) -> None:
    wrong = grpcclient.InferInput("images", [1, 3, 10, 10], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 10, 10), np.float32))
    with pytest.raises(InferenceServerException, match=r"INVALID_ARGUMENT.*expected input"):
        grpc.infer(MODEL, [wrong])
    garbage = grpcclient.InferInput("IMAGE", [1], "BYTES")
    garbage.set_data_from_numpy(np.array([b"not an image"], dtype=object))
    with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT"):
        grpc.infer(f"{MODEL}.detect", [garbage])


def _detect(server: Server, blob: bytes, **params: Any) -> list[dict[str, Any]]:
    with server.client() as client:
        response = client.post(
            "/detect", params=params, files={"image": ("photo.jpg", blob, "image/jpeg")}
        )
    assert response.status_code == 200, response.text
    detections: list[dict[str, Any]] = response.json()["detections"]
    return detections


def _assert_same(result: Any, detections: list[list[dict[str, Any]]]) -> None:
    """The image model's tensors hold the detections /detect returned (which rounds scores to
    4 decimals and boxes to 0.1 px)."""
    counts = result.as_numpy("count")
    assert counts.tolist() == [len(d) for d in detections]
    assert sum(counts) > 0
    for row, expected in enumerate(detections):
        n = counts[row]
        labels = [bytes(x).decode() for x in result.as_numpy("labels")[row, :n]]
        assert labels == [d["label"] for d in expected]
        assert result.as_numpy("classes")[row, :n].tolist() == [d["class_id"] for d in expected]
        np.testing.assert_allclose(
            result.as_numpy("scores")[row, :n], [d["score"] for d in expected], atol=6e-5
        )
        np.testing.assert_allclose(
            result.as_numpy("boxes")[row, :n], [d["box"] for d in expected], atol=0.06
        )


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_image_model_returns_the_detections_of_detect(
    served: tuple[Server, str], images: np.ndarray, protocol: str
) -> None:
    server, grpc_address = served
    params = {"conf": 0.3, "classes": "person,bus"}
    expected = [_detect(server, bytes(blob), **params) for blob in images]
    module: Any = grpcclient if protocol == "grpc" else httpclient
    address = grpc_address if protocol == "grpc" else server.url.removeprefix("http://")
    client = module.InferenceServerClient(address)
    tensor = module.InferInput("IMAGE", [len(images)], "BYTES")
    tensor.set_data_from_numpy(images)
    result = client.infer(f"{MODEL}.detect", [tensor], parameters=params)
    _assert_same(result, expected)


def test_statistics_count_requests(served: tuple[Server, str], images: np.ndarray) -> None:
    server, grpc_address = served
    with server.client() as client:
        before = client.get(f"/v2/models/{MODEL}.fp32/stats").json()["model_stats"][0]
        client_ = grpcclient.InferenceServerClient(grpc_address)
        tensor = grpcclient.InferInput("IMAGE", [len(images)], "BYTES")
        tensor.set_data_from_numpy(images)
        client_.infer(f"{MODEL}.detect", [tensor])
        after = client.get(f"/v2/models/{MODEL}.fp32/stats").json()["model_stats"][0]
        every = client.get("/v2/models/stats").json()["model_stats"]
        assert client.get(f"/v2/models/{MODEL}.int8/stats").status_code == 404
    success = (
        after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    )
    assert success == 1
    assert after["inference_count"] - before["inference_count"] == len(images)
    assert after["execution_count"] > before["execution_count"]
    for key in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert after["inference_stats"][key]["ns"] > before["inference_stats"][key]["ns"]
    assert [s["name"] for s in every] == [f"{MODEL}.fp32"]


def test_proto_is_wire_compatible_with_tritons() -> None:
    """Every message and field of our .proto has Triton's number and type (checked on the
    serialized descriptor, so the two same-named packages never meet in one descriptor pool)."""
    from google.protobuf import descriptor_pb2
    from tritonclient.grpc import service_pb2

    generated = (REPO / "service/grpc_v2/grpc_predict_v2_pb2.py").read_text()
    line = next(x for x in generated.splitlines() if "AddSerializedFile" in x)
    ours = descriptor_pb2.FileDescriptorProto.FromString(
        ast.literal_eval(line[line.index("AddSerializedFile(") + 18 : line.rindex(")")])
    )
    theirs = descriptor_pb2.FileDescriptorProto()
    service_pb2.DESCRIPTOR.CopyToProto(theirs)

    def check(mine: Any, other: Any) -> None:
        fields = {f.name: f for f in other.field}
        for f in mine.field:
            assert (fields[f.name].number, fields[f.name].type) == (f.number, f.type), f.name
        nested = {n.name: n for n in other.nested_type}
        for n in mine.nested_type:
            check(n, nested[n.name])

    messages = {m.name: m for m in theirs.message_type}
    for message in ours.message_type:
        check(message, messages[message.name])
    methods = {m.name: m for m in theirs.service[0].method}
    for method in ours.service[0].method:
        assert methods[method.name].input_type == method.input_type


def test_repository_index_answers_and_model_control_is_refused_by_default(
    grpc: grpcclient.InferenceServerClient,
) -> None:
    index = grpc.get_model_repository_index(as_json=True)["models"]
    assert {"name": MODEL, "version": "1", "state": "READY"} in index
    for change in (grpc.load_model, grpc.unload_model):
        with pytest.raises(InferenceServerException, match="PERMISSION_DENIED"):
            change(MODEL)
    assert grpc.is_model_ready(MODEL)
