"""The v2 codec's worker process never outlives the server (killed outright, it leaked before)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from service.api.kserve_pool import BIG_BYTES
from tests.conftest import DEFAULT_MODEL, Server


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")".
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def test_codec_worker_exits_when_the_server_is_killed(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory()
    before = children(server.process.pid)
    values = ",".join(["0.5"] * (BIG_BYTES // 4))  # over BIG_BYTES: parsed in the worker
    body = (
        '{"inputs":[{"name":"images","shape":[1,3,416,416],"datatype":"FP32","data":['
        + values
        + "]}]}"
    )
    with server.client() as client:
        r = client.post(f"/v2/models/{DEFAULT_MODEL}/infer", content=body)
    assert r.status_code == 400, r.text  # wrong element count: refused, but parsed by the worker
    workers = children(server.process.pid) - before
    assert workers, "no codec worker process was started"
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()
    give_up = time.monotonic() + 30
    while any(alive(pid) for pid in workers):
        assert time.monotonic() < give_up, f"codec workers {workers} outlived the killed server"
        time.sleep(0.1)
