"""Run ``detect-serve serve`` as a child process on a free loopback port (bench, soak, tests)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# uvicorn's start-up line names the port it really bound (also when asked for port 0), and so
# does ours for gRPC (also when asked for "any").
UVICORN_PORT = re.compile(r"Uvicorn running on http://[^\s]+:(\d+) ")
GRPC_PORT = re.compile(r"KServe v2 gRPC on [^\s]+:(\d+)")


def free_port() -> int:
    """A loopback port that was free a moment ago, for peers that cannot report the port they
    bound (a plain uvicorn server, LitServe); our own servers bind port 0 themselves instead."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening_port(
    log_path: Path, pattern: re.Pattern[str], process: subprocess.Popen[bytes], timeout_s: float
) -> int:
    """The port a child that bound port 0 reports in its log (group 1 of ``pattern``)."""
    deadline = time.monotonic() + timeout_s
    while True:  # looked at least once (timeout 0: a server already known to be ready)
        found = pattern.search(log_path.read_text(errors="replace"))
        if found:
            return int(found.group(1))
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before listening")
        if time.monotonic() >= deadline:
            raise RuntimeError(f"no listening port in {log_path} after {timeout_s:.0f}s")
        time.sleep(0.05)


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

        Without ``DETECT_PORT`` the server binds port 0 itself and its real port is read back
        from its log (no window in which another process could take a port picked for it).
        ``module`` is the entry point run with ``python -m`` (tests name one that wraps the CLI).
        """
        full_env = {
            **os.environ,
            "DETECT_HOST": "127.0.0.1",
            "DETECT_PORT": "0",
            # Servers run side by side (tests, benchmarks): never all on the default 8001;
            # a test that needs gRPC passes DETECT_GRPC_PORT=any and asks grpc_address().
            "DETECT_GRPC_PORT": "0",
            **(env or {}),
        }
        workdir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="server-", suffix=".log", dir=workdir)
        os.close(fd)
        log_path = Path(name)
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", module, "serve", *(args or [])],
                cwd=cwd,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = cls("", process, log_path)
        port = int(full_env["DETECT_PORT"])
        if port:
            server.url = f"http://127.0.0.1:{port}"
        if wait_ready:
            server.wait_ready(ready_timeout_s)
        return server

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        if not self.url:  # bound port 0: uvicorn logs the port once the models have loaded
            try:
                port = listening_port(self.log_path, UVICORN_PORT, self.process, timeout_s)
            except RuntimeError as exc:
                self.stop(signal.SIGKILL)
                raise RuntimeError(
                    f"server did not start listening ({exc}):\n{self.log()}"
                ) from None
            self.url = f"http://127.0.0.1:{port}"
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

    def grpc_address(self) -> str:
        """host:port of the gRPC endpoint of a ready server started with one (e.g. on "any")."""
        port = listening_port(self.log_path, GRPC_PORT, self.process, timeout_s=0)
        return f"127.0.0.1:{port}"

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
