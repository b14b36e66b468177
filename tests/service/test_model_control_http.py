"""Model control while serving (the KServe v2 repository extension), against real servers:
index, load, unload and reload over ``tritonclient.http`` and ``tritonclient.grpc``; requests
in flight finish on the version they started on; a failed reload leaves the served version
serving; API keys; and the refusal when model control is off (the default)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import MODELS_DIR, Server

pytestmark = pytest.mark.slow
MODEL, OTHER, BROKEN = "yolov3-tiny-coco", "yolov8n-coco", "broken-model"
KEY = "control-key"


def auth() -> dict[str, str]:
    """The key header, a fresh dict per call (tritonclient adds its own headers to it)."""
    return {"x-api-key": KEY}


def copy_repository(root: Path) -> Path:
    """The home's two models in a repository of the test's own (a test breaks a source)."""
    models = root / "models"
    for name in (MODEL, OTHER):
        shutil.copytree(MODELS_DIR / name / "source", models / name / "source")
    broken = models / BROKEN / "source" / "model.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"this is not an ONNX model")
    return models


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, default_model_source: Path) -> Path:
    return copy_repository(tmp_path_factory.mktemp("control"))


@pytest.fixture(scope="module")
def served(server_factory: Callable[..., Server], repo: Path) -> tuple[Server, str]:
    """Model control on, API keys set, gRPC on its own port; only MODEL loaded at start."""
    server = server_factory(
        {
            "DETECT_MODELS_DIR": str(repo),
            "DETECT_MODEL_CONTROL": "true",
            "DETECT_API_KEYS": f'["{KEY}"]',
            "DETECT_GRPC_PORT": "any",
        }
    )
    return server, server.grpc_address()


def http(server: Server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.url.removeprefix("http://"))


def states(index: list[dict[str, str]]) -> dict[str, tuple[str, str]]:
    return {e["name"]: (e["state"], e.get("version", "")) for e in index}


def detect(server: Server, data: bytes, **params: object) -> httpx.Response:
    return httpx.post(
        f"{server.url}/detect",
        params={"model": MODEL, **params},
        files={"image": ("i.jpg", data)},
        headers=auth(),
        timeout=120,
    )


def v2_image(client: httpclient.InferenceServerClient, data: bytes) -> str:
    """One image through the v2 image model; the version that answered."""
    image = httpclient.InferInput("IMAGE", [1], "BYTES")
    image.set_data_from_numpy(np.array([data], dtype=object))
    result = client.infer(f"{MODEL}.detect", [image], headers=auth())
    version: str = result.get_response()["model_version"]
    return version


def test_index_load_unload_over_http(
    served: tuple[Server, str], photo: Callable[..., bytes]
) -> None:
    server, _ = served
    client = http(server)
    index = states(client.get_model_repository_index(headers=auth()))
    assert index[MODEL][0] == "READY" and index[OTHER] == ("UNAVAILABLE", "")
    client.load_model(OTHER, headers=auth())
    assert client.is_model_ready(OTHER, headers=auth())
    assert states(client.get_model_repository_index(headers=auth()))[OTHER][0] == "READY"
    assert OTHER in [
        m["name"] for m in httpx.get(f"{server.url}/models", headers=auth()).json()["models"]
    ]

    client.unload_model(OTHER, headers=auth())
    assert states(client.get_model_repository_index(headers=auth()))[OTHER][0] == "UNAVAILABLE"
    gone = httpx.post(
        f"{server.url}/detect",
        params={"model": OTHER},
        files={"image": ("i", photo("bus"))},
        headers=auth(),
    )
    assert gone.status_code == 404 and "unloaded" in gone.json()["error"]["message"]
    ready = httpx.get(f"{server.url}/v2/models/{OTHER}/ready", headers=auth())
    assert ready.status_code == 404 and "/load" in ready.json()["error"]
    assert OTHER not in [
        m["name"] for m in httpx.get(f"{server.url}/models", headers=auth()).json()["models"]
    ]
    metrics = httpx.get(f"{server.url}/metrics").text
    assert f'detect_engine_ready{{model="{OTHER}",precision="fp32"}} 0.0' in metrics


def test_reload_is_a_new_version_everywhere(
    served: tuple[Server, str], photo: Callable[..., bytes]
) -> None:
    server, _ = served
    client = http(server)
    before = int(client.get_model_metadata(MODEL, headers=auth())["versions"][0])
    client.load_model(MODEL, headers=auth())
    now = str(before + 1)
    assert client.get_model_metadata(MODEL, headers=auth())["versions"] == [now]
    assert detect(server, photo("bus")).headers["X-Model-Version"] == now
    assert v2_image(client, photo("bus")) == now
    assert client.is_model_ready(MODEL, model_version=now, headers=auth())
    old = httpx.get(f"{server.url}/v2/models/{MODEL}/versions/{before}/ready", headers=auth())
    assert old.status_code == 404 and f"serves version {now}" in old.json()["error"]
    stats = client.get_inference_statistics(MODEL, headers=auth())["model_stats"][0]
    assert stats["version"] == now


def test_index_load_unload_over_grpc(served: tuple[Server, str]) -> None:
    _, address = served
    client = grpcclient.InferenceServerClient(address)
    index = client.get_model_repository_index(headers=auth(), as_json=True)["models"]
    assert states(index)[MODEL][0] == "READY"
    version = int(client.get_model_metadata(MODEL, headers=auth(), as_json=True)["versions"][0])
    client.load_model(MODEL, headers=auth())
    meta = client.get_model_metadata(MODEL, headers=auth(), as_json=True)
    assert meta["versions"] == [str(version + 1)]
    stats = client.get_inference_statistics(MODEL, headers=auth(), as_json=True)["model_stats"]
    assert stats[0]["name"] == MODEL and stats[0]["version"] == str(version + 1)
    client.load_model(OTHER, headers=auth())
    assert client.is_model_ready(OTHER, headers=auth())
    client.unload_model(OTHER, headers=auth())
    with pytest.raises(InferenceServerException, match="NOT_FOUND"):
        client.is_model_ready(OTHER, headers=auth())
    with pytest.raises(InferenceServerException, match="NOT_FOUND"):
        client.load_model("../etc", headers=auth())
    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
        client.get_model_repository_index()


def test_names_are_checked_and_keys_required(served: tuple[Server, str]) -> None:
    server, _ = served
    for name in ("no-such-model", "..", ".hidden", "a%2Fb", "x" * 300):
        answer = httpx.post(f"{server.url}/v2/repository/models/{name}/load", headers=auth())
        assert answer.status_code == 404, (name, answer.text)
    unknown = httpx.post(f"{server.url}/v2/repository/models/nope/unload", headers=auth())
    assert "no model 'nope' in the model repository" in unknown.json()["error"]
    for path in ("index", f"models/{MODEL}/load", f"models/{MODEL}/unload"):
        assert httpx.post(f"{server.url}/v2/repository/{path}").status_code == 401
    bad = httpx.post(f"{server.url}/v2/repository/index", content=b"{", headers=auth())
    assert bad.status_code == 400 and "JSON" in bad.json()["error"]


def test_failed_reload_keeps_the_served_version(
    served: tuple[Server, str], repo: Path, photo: Callable[..., bytes]
) -> None:
    server, _ = served
    client = http(server)
    serving = client.get_model_metadata(MODEL, headers=auth())["versions"][0]
    source = repo / MODEL / "source" / "model.onnx"
    kept = source.read_bytes()
    try:
        source.write_bytes(b"not an onnx model")
        failed = httpx.post(f"{server.url}/v2/repository/models/{MODEL}/load", headers=auth())
        assert failed.status_code == 400
        assert "not a readable ONNX model" in failed.json()["error"]
        assert f"version {serving} keeps serving" in failed.json()["error"]
        assert detect(server, photo("bus")).headers["X-Model-Version"] == serving
        assert states(client.get_model_repository_index(headers=auth()))[MODEL] == (
            "READY",
            serving,
        )
        source.unlink()  # missing files: the same
        missing = httpx.post(f"{server.url}/v2/repository/models/{MODEL}/load", headers=auth())
        assert missing.status_code == 400 and "has no source" in missing.json()["error"]
    finally:
        source.write_bytes(kept)
    client.load_model(MODEL, headers=auth())
    assert detect(server, photo("bus")).headers["X-Model-Version"] == str(int(serving) + 1)


def test_a_model_that_cannot_load_is_refused_and_the_server_stays_ready(
    served: tuple[Server, str],
) -> None:
    server, _ = served
    client = http(server)
    assert states(client.get_model_repository_index(headers=auth()))[BROKEN][0] == "UNAVAILABLE"
    refused = httpx.post(f"{server.url}/v2/repository/models/{BROKEN}/load", headers=auth())
    assert refused.status_code == 400 and "not a readable ONNX model" in refused.json()["error"]
    entry = next(
        e for e in client.get_model_repository_index(headers=auth()) if e["name"] == BROKEN
    )
    assert entry["state"] == "UNAVAILABLE" and "not a readable ONNX model" in entry["reason"]
    assert httpx.get(f"{server.url}/health/ready").status_code == 200


def test_model_control_is_off_by_default(server: Server) -> None:
    for path in (f"models/{MODEL}/load", f"models/{MODEL}/unload"):
        refused = httpx.post(f"{server.url}/v2/repository/{path}")
        assert refused.status_code == 403
        assert "DETECT_MODEL_CONTROL=true" in refused.json()["error"]
    index = httpx.post(f"{server.url}/v2/repository/index", json={"ready": True})
    assert index.status_code == 200 and [e["name"] for e in index.json()] == [MODEL]
    assert httpx.get(f"{server.url}/v2/models/{MODEL}/ready").status_code == 200
