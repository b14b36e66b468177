"""Two soak scenarios from issue 14, run by ``scripts/soak.py --scenario storm|bomb``.

* ``storm``: many clients that retry the moment they are refused, against the capacity that 16
  well-behaved clients measured on the same server just before.
* ``bomb``: concurrent requests of four 1 x 39,999,999 PNGs (76 KiB each, a GiB to decode).

Both watch the server from the side while they run: resident memory (sampled every 0.2 s) and
``/health/live`` latency (probed every 0.1 s on its own connection, from a process of its own so
the attacking clients' CPU use does not show up as the server's latency), the two things a
hostile client tries to break.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import struct
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

import httpx
import numpy as np

from bench.process import ServerProcess


@dataclass
class Watch:
    """RSS peak and liveness latency of a server, sampled in background threads."""

    server: ServerProcess
    rss_mib: list[float] = field(default_factory=list)
    live_ms: list[float] = field(default_factory=list)
    live_failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Watch:
        self._threads = [threading.Thread(target=self._rss, daemon=True)]
        self._threads[0].start()
        context = multiprocessing.get_context("spawn")
        self._probe_stop = context.Event()
        self._probe_out, child_end = context.Pipe(duplex=False)
        self._prober = context.Process(
            target=probe_live, args=(self.server.url, self._probe_stop, child_end), daemon=True
        )
        self._prober.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._probe_stop.set()
        self.live_ms, self.live_failures = self._probe_out.recv()
        self._prober.join()
        for thread in self._threads:
            thread.join()

    def _rss(self) -> None:
        while not self._stop.wait(0.2):
            self.rss_mib.append(self.server.rss_bytes() / 2**20)

    def report(self, baseline_mib: float) -> dict[str, Any]:
        return {
            "rss_baseline_mib": round(baseline_mib, 1),
            "rss_peak_mib": round(max(self.rss_mib, default=baseline_mib), 1),
            "rss_peak_over_baseline_mib": round(max(self.rss_mib, default=0) - baseline_mib, 1),
            "live_probes": len(self.live_ms),
            "live_failures": self.live_failures,
            "live_p50_ms": round(statistics.median(self.live_ms), 1) if self.live_ms else None,
            "live_p99_ms": round(float(np.percentile(self.live_ms, 99)), 1)
            if self.live_ms
            else None,
            "live_max_ms": round(max(self.live_ms), 1) if self.live_ms else None,
        }


@dataclass
class StormResult:
    statuses: Counter[int]
    accepted_ms: list[float]  # client-side latency of every 200
    server_ms: list[float]  # the server's own timing_ms.total of every 200
    estimates: list[tuple[float, float]]  # Server-Timing (estimate, actual) ms
    bad_5xx: int  # 5xx other than 503 with Retry-After
    wrong: int  # 200s without a bus in the bus photo


def probe_live(url: str, stop: Event, out: Connection) -> None:
    """In a child process: probe ``/health/live`` every 0.1 s until ``stop``; send the results."""
    latencies: list[float] = []
    failures = 0
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.wait(0.1):
            started = time.perf_counter()
            try:
                ok = client.get("/health/live").status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append((time.perf_counter() - started) * 1000)
            failures += not ok
    out.send((latencies, failures))


async def retry_storm(url: str, image: bytes, clients: int, seconds: float) -> StormResult:
    """``clients`` loops that post at once, and again the moment an answer comes back."""
    statuses: Counter[int] = Counter()
    accepted_ms: list[float] = []
    estimates: list[tuple[float, float]] = []
    server_ms: list[float] = []
    bad_5xx = wrong = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def loop(client: httpx.AsyncClient, stop_at: float) -> None:
        nonlocal bad_5xx, wrong
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                r = await client.post("/detect", files={"image": ("bus.jpg", image)})
            except httpx.HTTPError:
                statuses[0] += 1
                continue
            statuses[r.status_code] += 1
            if r.status_code == 200:
                accepted_ms.append((time.perf_counter() - started) * 1000)
                body = r.json()
                server_ms.append(body["timing_ms"]["total"])
                if not any(d["label"] == "bus" for d in body["detections"]):
                    wrong += 1
                timing = dict(
                    p.strip().split(";dur=") for p in r.headers["Server-Timing"].split(",")
                )
                estimates.append((float(timing["estimate"]), float(timing["actual"])))
            elif r.status_code >= 500 and not (r.status_code == 503 and "retry-after" in r.headers):
                bad_5xx += 1

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        stop_at = time.perf_counter() + seconds
        await asyncio.gather(*(loop(client, stop_at) for _ in range(clients)))
    return StormResult(statuses, accepted_ms, server_ms, estimates, bad_5xx, wrong)


def png_bomb(height: int = 39_999_999) -> bytes:
    """The issue's reproducer: a complete 1 x ``height`` 8-bit grey PNG of zeros."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", 1, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 2 * height, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


async def bomb_attack(
    url: str, requests: int, images: int, seconds: float
) -> list[tuple[int, float, str]]:
    """Rounds of ``requests`` concurrent posts of ``images`` bombs each, for ``seconds``:
    (status, seconds, error code) of every post."""
    bomb = png_bomb()

    async def one(client: httpx.AsyncClient) -> tuple[int, float, str]:
        started = time.perf_counter()
        try:
            r = await client.post("/detect", files=[("image", ("a.png", bomb))] * images)
        except httpx.HTTPError as exc:
            return 0, time.perf_counter() - started, type(exc).__name__
        code = r.json().get("error", {}).get("code", "") if r.status_code != 200 else ""
        return r.status_code, time.perf_counter() - started, code

    answers: list[tuple[int, float, str]] = []
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        stop_at = time.perf_counter() + seconds
        while not answers or time.perf_counter() < stop_at:
            answers += await asyncio.gather(*(one(client) for _ in range(requests)))
    return answers


def storm_report(
    capacity_per_s: float,
    seconds: float,
    deadline_ms: float,
    result: StormResult,
) -> dict[str, Any]:
    statuses, ok_ms, estimates = result.statuses, result.accepted_ms, result.estimates
    ratios = [actual / est for est, actual in estimates if est > 0]
    return {
        "capacity_16_clients_per_s": round(capacity_per_s, 2),
        "goodput_per_s": round(statuses[200] / seconds, 2),
        "goodput_ratio": round(statuses[200] / seconds / capacity_per_s, 3),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "5xx_other_than_503_with_retry_after": result.bad_5xx,
        "wrong_answers": result.wrong,
        "accepted_p50_ms": round(statistics.median(ok_ms), 1) if ok_ms else None,
        "accepted_p99_ms": round(float(np.percentile(ok_ms, 99)), 1) if ok_ms else None,
        "accepted_over_deadline": sum(1 for v in ok_ms if v > deadline_ms),
        # The server's own total (handler start to reply): the client side above also counts
        # its own CPU starvation on a shared machine.
        "accepted_server_p99_ms": round(float(np.percentile(result.server_ms, 99)), 1)
        if result.server_ms
        else None,
        "accepted_server_over_deadline": sum(1 for v in result.server_ms if v > deadline_ms),
        "deadline_ms": deadline_ms,
        # Admission's (calibrated) estimate of queue + inference against what it took.
        "estimate_p50_ms": round(statistics.median(e for e, _ in estimates), 1)
        if estimates
        else None,
        "actual_p50_ms": round(statistics.median(a for _, a in estimates), 1)
        if estimates
        else None,
        "actual_over_estimate_p50": round(statistics.median(ratios), 3) if ratios else None,
        "actual_over_estimate_p95": round(float(np.percentile(ratios, 95)), 3) if ratios else None,
    }
