"""``detect-serve bench``: raw pipeline vs HTTP service, batching on vs off, RSS over time."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
from pathlib import Path

from bench.process import ServerProcess
from service.config import Settings


def add_bench_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = sub.add_parser("bench", help="benchmark the pipeline and the HTTP service")
    bench.add_argument("--model", default=None, help="default: the configured default model")
    bench.add_argument("--precision", default="fp32")
    bench.add_argument("--batches", default="1,2,4,8", help="raw pipeline batch sizes")
    bench.add_argument("--clients", default="1,16", help="concurrent HTTP clients to test")
    bench.add_argument("--seconds", type=float, default=20.0, help="duration of each HTTP run")
    bench.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds of load before each HTTP measurement window (default: max(2, 10%% of it))",
    )
    bench.add_argument(
        "--rss-requests",
        type=int,
        default=0,
        help="also send this many requests and compare RSS after 10%% and 100%%",
    )
    bench.add_argument("--out", type=Path, default=Path("bench-results"))
    bench.add_argument(
        "--peers",
        action="store_true",
        help="instead: detect-serve per precision and auto next to a plain FastAPI + ORT server "
        "and LitServe, same model/photo/client (bench.peers)",
    )
    bench.add_argument(
        "--duration", type=float, default=None, help="--peers: seconds per point (default 20)"
    )
    bench.add_argument(
        "--peer-clients", default="1,2,4,8,16", help="--peers: client counts to sweep"
    )
    bench.set_defaults(func=cmd_bench)


def _images() -> list[bytes]:
    from engines.sources.sample_images import sample_image

    return [sample_image(n).read_bytes() for n in ("bus", "zidane", "coffee", "astronaut")]


def cmd_bench(args: argparse.Namespace) -> int:
    if args.peers:
        from bench.peers import run

        sweep = sorted(int(c) for c in args.peer_clients.split(","))
        run(args.duration or 20.0, sweep, args.out)
        return 0
    from bench.http import as_json, bench_http, bench_pipeline, load_engine, plot
    from engines.precision import Precision

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the report
    settings = Settings()
    model = args.model or settings.default_model
    images = _images()
    engine, pipeline = load_engine(settings, model, Precision(args.precision))
    raw = bench_pipeline(engine, pipeline, images, [int(b) for b in args.batches.split(",")])
    engine.close()
    for p in raw:
        print(
            f"raw pipeline  batch {p.batch:>2}: {p.latency_ms:8.1f} ms  {p.images_per_s:6.1f} img/s"
        )
    env = {
        "DETECT_MODELS": json.dumps([model]),
        "DETECT_DEFAULT_MODEL": model,
        "DETECT_DEFAULT_PRECISION": args.precision,
        "DETECT_MODELS_DIR": str(settings.models_dir.resolve()),
        "DETECT_ENGINES_DIR": str(settings.engines_dir.resolve()),
        "DETECT_MAX_QUEUE": "256",
    }
    http = []
    rss: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, max_batch in (("batching on", settings.max_batch), ("batching off", 1)):
            server = ServerProcess.start(Path(tmp), {**env, "DETECT_MAX_BATCH": str(max_batch)})
            try:
                for clients in (int(c) for c in args.clients.split(",")):
                    if max_batch == 1 and clients == 1:
                        continue  # identical to batching on with one client
                    point = asyncio.run(
                        bench_http(server.url, images, clients, args.seconds, label, args.warmup)
                    )
                    http.append(point)
                    print(
                        f"HTTP {label:12} {clients:>2} clients: {point.images_per_s:6.1f} img/s "
                        f"p50 {point.p50_ms:7.1f} p95 {point.p95_ms:7.1f} "
                        f"p99 {point.p99_ms:7.1f} ms  mean batch {point.mean_batch:4.1f} "
                        f"errors {point.errors}"
                    )
                if args.rss_requests and max_batch > 1:
                    rss = _rss_over_requests(server, images, args.rss_requests)
            finally:
                server.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    best = max(p.images_per_s for p in raw)
    report = as_json(
        raw, http, model=model, precision=args.precision, raw_best_images_per_s=best, rss_bytes=rss
    )
    (args.out / "bench.json").write_text(json.dumps(report, indent=2))
    plot(raw, http, args.out / "bench.png")
    print(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.png'}")
    return 0


def _rss_over_requests(server: ServerProcess, images: list[bytes], total: int) -> dict[str, int]:
    """Send ``total`` requests in tenths, printing the server's RSS after each tenth."""
    from bench.http import bench_requests

    step = max(1, total // 10)
    rss: dict[str, int] = {}
    sent = 0
    while sent < total:
        n = min(step, total - sent)
        errors = asyncio.run(bench_requests(server.url, images, n, clients=8))
        sent += n
        rss[f"after_{sent}"] = server.rss_bytes()
        print(
            f"RSS after {sent} requests: {rss[f'after_{sent}'] / 2**20:.1f} MiB ({errors} errors)",
            flush=True,
        )
    first, last = rss[f"after_{step}"], rss[f"after_{total}"]
    print(f"RSS growth from {step} to {total} requests: {(last / first - 1) * 100:+.1f}%")
    return rss
