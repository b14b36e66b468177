"""A peer server is stopped with every process it started (LitServe's workers outlived it)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bench.peers import _stop

# A server that starts a worker which ignores SIGTERM (as a busy inference worker may), writes
# the worker's pid, and exits on SIGTERM itself.
SERVER = """
import signal, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
open(sys.argv[1], "w").write(str(worker.pid))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_stop_ends_the_peer_and_its_workers(tmp_path: Path) -> None:
    pid_file = tmp_path / "worker.pid"
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(pid_file)], start_new_session=True
    )
    give_up = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < give_up, "the stand-in server never started its worker"
        time.sleep(0.05)
    worker = int(pid_file.read_text())
    _stop(process)
    assert process.returncode is not None
    give_up = time.monotonic() + 10
    while alive(worker):  # SIGKILLed, then reaped by init
        assert time.monotonic() < give_up, "the worker outlived its server"
        time.sleep(0.05)
