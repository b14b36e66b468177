"""Run ``detect-serve serve`` as a child process on a free loopback port (bench, soak, tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(
        cls,
        workdir: Path,
        env: dict[str, str] | None = None,
        *,
        cwd: Path | None = None,
        ready_timeout_s: float = 180.0,
        wait_ready: bool = True,
        args: list[str] | None = None,
        module: str = "service.cli",
    ) -> ServerProcess:
        """Start a server whose settings come from ``env`` (DETECT_*); wait for readiness.

        ``module`` is the entry point run with ``python -m`` (tests name one that wraps the CLI).
        """
        port = int((env or {}).get("DETECT_PORT") or free_port())
        full_env = {
            **os.environ,
            "DETECT_HOST": "127.0.0.1",
            "DETECT_PORT": str(port),
            **(env or {}),
        }
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = workdir / f"server-{port}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", module, "serve", *(args or [])],
                cwd=cwd,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = cls(f"http://127.0.0.1:{port}", process, log_path)
        if wait_ready:
            server.wait_ready(ready_timeout_s)
        return server

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"server not ready after {timeout_s:.0f}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_bytes(self) -> int:
        """Resident set size of the server process (Linux /proc)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("VmRSS not found")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                return self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)
