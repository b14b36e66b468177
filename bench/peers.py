"""detect-serve next to the servers users would otherwise run, in one run on one machine.

``detect-serve bench --peers [--duration S] [--clients 1,2,4,8,16]`` (or ``python -m
bench.peers``) measures, with the same model, photo (``bus.jpg``), pre/post-processing code and
client (closed-loop httpx clients posting the photo as multipart ``image``):

- the raw pipeline in-process (decode + letterbox + ORT + NMS, batch 1 and 8, no HTTP), FP32;
- detect-serve with ``precision=fp32``, each other served precision, and ``auto``;
- a plain FastAPI + one ORT session server (``bench.peer_fastapi``), FP32;
- LitServe with batching, max 8 / 4 ms (``bench.peer_litserve``), FP32.

Each server is swept over the client counts; the table is the largest count. Agreement is
the mAP50-95 of each server's answers against the raw FP32 pipeline's detections of the photo
(the build's measure). Prints the table with the load average it ran under and writes
``peers.json`` and ``peers.png`` (img/s and p99 against clients, per server).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

from bench.http import PipelinePoint, bench_pipeline, load_engine
from bench.peer_common import OPTIONS
from bench.process import ServerProcess, free_port
from engines.build.accuracy import agreement
from engines.model.postprocess import Detections
from engines.precision import Precision
from engines.sources.sample_images import sample_image
from service.config import Settings


@dataclass
class Point:
    server: str
    clients: int
    images_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    answers: dict[str, int] = field(default_factory=dict)  # answer (JSON) -> count
    precisions: dict[str, int] = field(default_factory=dict)


async def _load(url: str, path: str, photo: bytes, clients: int, seconds: float) -> Point:
    """``clients`` closed-loop clients; counts only the steady window after a warm-up."""
    warmup_s = max(2.0, seconds * 0.1)
    samples: list[tuple[float, float, int, str, str]] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        await client.post(path, files={"image": ("bus.jpg", photo)})
        start = time.perf_counter() + warmup_s
        end = start + seconds

        async def one() -> None:
            while time.perf_counter() < end:
                began = time.perf_counter()
                r = await client.post(path, files={"image": ("bus.jpg", photo)})
                ok = r.status_code == 200
                body = json.dumps(r.json()["detections"]) if ok else ""
                precision = r.headers.get("x-precision", "fp32") if ok else ""
                samples.append((began, time.perf_counter(), r.status_code, body, precision))

        await asyncio.gather(*(one() for _ in range(clients)))
    window = [s for s in samples if s[0] >= start]
    ok = [s for s in window if s[2] == 200]
    ms = [(s[1] - s[0]) * 1000 for s in ok]
    done = sum(1 for s in samples if s[2] == 200 and start <= s[1] <= end)
    return Point(
        server="",
        clients=clients,
        images_per_s=done / seconds,
        p50_ms=float(np.percentile(ms, 50)) if ms else float("nan"),
        p99_ms=float(np.percentile(ms, 99)) if ms else float("nan"),
        errors=len(window) - len(ok),
        answers=dict(Counter(s[3] for s in ok)),
        precisions=dict(Counter(s[4] for s in ok)),
    )


def _agreement(answers: dict[str, int], reference: Detections, num_classes: int) -> float:
    """Answer-weighted mAP50-95 of a server's replies against the raw FP32 detections."""
    total = sum(answers.values())
    if not total:
        return float("nan")
    score = 0.0
    for body, count in answers.items():
        dets = json.loads(body)
        found = Detections(
            boxes=np.array([d["box"] for d in dets], dtype=np.float32).reshape(-1, 4),
            scores=np.array([d["score"] for d in dets], dtype=np.float32),
            class_ids=np.array([d["class_id"] for d in dets], dtype=np.int64),
        )
        score += count * agreement([reference], [found], num_classes).map50_95
    return score / total


def _peer(module: str, onnx: Path, workdir: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    log = (workdir / f"{module}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", module, str(onnx), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: _stop ends its workers too
    )
    url = f"http://127.0.0.1:{port}"
    give_up = time.monotonic() + 180
    while time.monotonic() < give_up:
        if process.poll() is not None:
            raise RuntimeError(f"{module} exited: {(workdir / f'{module}.log').read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return url, process
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    _stop(process)
    raise RuntimeError(f"{module} not ready after 180 s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """End a peer server and every process it started. LitServe's inference workers are
    processes of their own that outlived a plain terminate() and kept spinning on the cores."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # whatever is left of the group
    process.wait()


def _sweep(
    name: str, url: str, path: str, photo: bytes, clients: list[int], seconds: float
) -> list[Point]:
    points = []
    for n in clients:
        point = asyncio.run(_load(url, path, photo, n, seconds))
        point.server = name
        points.append(point)
        print(
            f"  {name:<28} {n:>2} clients: {point.images_per_s:6.1f} img/s  "
            f"p50 {point.p50_ms:7.1f}  p99 {point.p99_ms:7.1f} ms  errors {point.errors}  "
            f"answered by {point.precisions}",
            flush=True,
        )
    return points


def run(duration: float, clients: list[int], out: Path) -> dict[str, object]:
    settings = Settings()
    model = settings.default_model
    photo = sample_image("bus").read_bytes()
    engine, pipeline = load_engine(settings, model, Precision.FP32)
    raw = bench_pipeline(engine, pipeline, [photo], [1, 8], seconds=max(3.0, duration / 2))
    reference = pipeline.detect_batch(engine, [pipeline.prepare(photo)], OPTIONS)[0]
    engine.close()
    onnx = Path(str(settings.engines_dir / model / "fp32.onnx"))
    if not onnx.is_file():
        onnx = settings.models_dir / model / "source" / "model.onnx"
    for p in raw:
        print(
            f"  raw pipeline fp32 batch {p.batch}: {p.images_per_s:.1f} img/s {p.latency_ms:.1f} ms"
        )
    points: list[Point] = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "DETECT_MODELS_DIR": str(settings.models_dir.resolve()),
            "DETECT_ENGINES_DIR": str(settings.engines_dir.resolve()),
            "DETECT_MAX_QUEUE": "256",
        }
        server = ServerProcess.start(Path(tmp), env)
        try:
            served = httpx.get(f"{server.url}/models").json()["models"][0]
            precisions = [v["precision"] for v in served["variants"]] + ["auto"]
            for precision in precisions:
                name = f"detect-serve {precision}"
                path = f"/detect?precision={precision}"
                points += _sweep(name, server.url, path, photo, clients, duration)
        finally:
            server.stop()
        for module, name in (
            ("bench.peer_fastapi", "plain FastAPI + ORT fp32"),
            ("bench.peer_litserve", "LitServe batch 8/4ms fp32"),
        ):
            url, process = _peer(module, onnx, Path(tmp))
            try:
                points += _sweep(name, url, "/detect", photo, clients, duration)
            finally:
                _stop(process)
    return _report(raw, points, reference, pipeline.info.num_classes, duration, out)


def _report(
    raw: list[PipelinePoint],
    points: list[Point],
    reference: Detections,
    num_classes: int,
    duration: float,
    out: Path,
) -> dict[str, object]:
    load = os.getloadavg()
    top = max(p.clients for p in points)
    raw_best = max(p.images_per_s for p in raw)
    raw_single = next(p.latency_ms for p in raw if p.batch == 1)
    rows = []
    print(f"\nload average during the run (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(
        f"{top} clients, {duration:.0f} s each after warm-up; raw best {raw_best:.1f} img/s, "
        f"raw single image {raw_single:.1f} ms"
    )
    print("| server | img/s | x raw | p50 ms | p99 ms | agreement vs FP32 | answered by |")
    print("|---|---|---|---|---|---|---|")
    print(f"| raw pipeline in-process (best batch) | {raw_best:.1f} | 1.00 | | | 1.000 | fp32 |")
    for p in points:
        if p.clients != top:
            continue
        agree = _agreement(p.answers, reference, num_classes)
        rows.append({**asdict(p), "agreement": agree, "answers": len(p.answers)})
        print(
            f"| {p.server} | {p.images_per_s:.1f} | {p.images_per_s / raw_best:.2f} | "
            f"{p.p50_ms:.0f} | {p.p99_ms:.0f} | {agree:.3f} | {p.precisions} |"
        )
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "load_average": load,
        "duration_s": duration,
        "raw": [asdict(p) for p in raw],
        "table": rows,
        "sweep": [{k: v for k, v in asdict(p).items() if k != "answers"} for p in points],
    }
    (out / "peers.json").write_text(json.dumps(report, indent=1))
    _plot(points, raw_best, out / "peers.png")
    print(f"wrote {out / 'peers.json'} and {out / 'peers.png'}")
    return report


def _plot(points: list[Point], raw_best: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in dict.fromkeys(p.server for p in points):
        mine = [p for p in points if p.server == name]
        left.plot([p.clients for p in mine], [p.images_per_s for p in mine], "o-", label=name)
        right.plot([p.clients for p in mine], [p.p99_ms for p in mine], "o-", label=name)
    left.axhline(raw_best, color="black", linestyle="--", label="raw pipeline, best batch")
    left.set(xlabel="concurrent clients", ylabel="images / s", xscale="log")
    right.set(xlabel="concurrent clients", ylabel="p99 latency, ms", xscale="log")
    left.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="detect-serve vs peer servers")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_from_args(args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per point")
    parser.add_argument("--clients", default="1,2,4,8,16", help="client counts to sweep")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))


def run_from_args(args: argparse.Namespace) -> int:
    clients = sorted(int(c) for c in args.clients.split(","))
    run(args.duration, clients, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
