"""Benchmarks: the raw pipeline in-process vs the HTTP service, batching on and off.

Figures from one run on one machine are comparable with each other, not across machines; the
ratios (service / raw, batching on / off) are what the targets are about.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from engines.artifacts.variants import discover_variants
from engines.model.pipeline import DetectOptions, ModelPipeline, load_model_pipeline
from engines.precision import Precision
from engines.runtime.base import Engine
from service.config import Settings
from service.registry import engine_options, open_variant

OPTIONS = DetectOptions(conf=0.25, iou=0.45, max_det=300, classes=None)


@dataclass(frozen=True)
class PipelinePoint:
    batch: int
    latency_ms: float  # median wall time of decode + preprocess + infer + postprocess per batch
    images_per_s: float


@dataclass(frozen=True)
class HttpPoint:
    label: str
    clients: int
    requests: int
    errors: int
    images_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_batch: float


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def load_engine(
    settings: Settings, model: str, precision: Precision
) -> tuple[Engine, ModelPipeline]:
    """The model's pipeline and an engine for one of its variants, opened as the server does."""
    found = discover_variants(
        settings.models_dir,
        settings.engines_dir,
        model,
        settings.backend,
        tuple(settings.ort_providers),
    )
    servable = {v.record.precision: v for v in found.servable}
    if precision not in servable:
        why = found.refused.get(precision, "it was not built")
        raise ValueError(f"{model} has no servable {precision.value} variant: {why}")
    engine = open_variant(servable[precision], engine_options(settings))
    return engine, load_model_pipeline(found.source, model, max_pixels=settings.max_pixels)


def bench_pipeline(
    engine: Engine,
    pipeline: ModelPipeline,
    images: list[bytes],
    batches: Sequence[int],
    seconds: float = 5.0,
) -> list[PipelinePoint]:
    """Sequential decode -> batch -> infer -> postprocess, as one process would do it."""
    engine.warmup()
    points = []
    for batch in batches:
        durations: list[float] = []
        stop_at = time.perf_counter() + seconds
        i = 0
        while time.perf_counter() < stop_at or len(durations) < 3:
            started = time.perf_counter()
            prepared = [pipeline.prepare(images[(i + k) % len(images)]) for k in range(batch)]
            pipeline.detect_batch(engine, prepared, OPTIONS)
            durations.append(time.perf_counter() - started)
            i += batch
        median = statistics.median(durations)
        points.append(PipelinePoint(batch, median * 1000, batch / median))
    return points


@dataclass(frozen=True)
class _Sample:
    started: float
    finished: float
    status: int
    batch_size: int


async def _client(
    client: httpx.AsyncClient, images: list[bytes], stop_at: float, offset: int, out: list[_Sample]
) -> None:
    i = offset
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        r = await client.post("/detect", files={"image": ("img.jpg", images[i % len(images)])})
        batch = int(r.json()["batch_size"]) if r.status_code == 200 else 0
        out.append(_Sample(started, time.perf_counter(), r.status_code, batch))
        i += 1


async def bench_http(
    url: str,
    images: list[bytes],
    clients: int,
    seconds: float,
    label: str,
    warmup_s: float | None = None,
) -> HttpPoint:
    """``clients`` closed-loop clients uploading real JPEGs for ``seconds``, after a warm-up.

    All clients start at the same instant, so the first round of requests queues behind each
    other in a way that never recurs; like perf_analyzer, only a steady-state window counts:
    requests *started* after the warm-up give the latencies, requests *finished* inside the
    window give the throughput.
    """
    if warmup_s is None:
        warmup_s = max(2.0, seconds * 0.1)
    samples: list[_Sample] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        for _ in range(2):  # warm connections and the server's thread pools
            await client.post("/detect", files={"image": ("img.jpg", images[0])})
        window_start = time.perf_counter() + warmup_s
        window_end = window_start + seconds
        await asyncio.gather(
            *(_client(client, images, window_end, k, samples) for k in range(clients))
        )
    measured = [s for s in samples if s.started >= window_start]
    ok = [s for s in measured if s.status == 200]
    ms = [(s.finished - s.started) * 1000 for s in ok]
    done_in_window = sum(
        1 for s in samples if s.status == 200 and window_start <= s.finished <= window_end
    )
    return HttpPoint(
        label=label,
        clients=clients,
        requests=len(ok),
        errors=len(measured) - len(ok),
        images_per_s=done_in_window / seconds,
        p50_ms=_percentile(ms, 50),
        p95_ms=_percentile(ms, 95),
        p99_ms=_percentile(ms, 99),
        mean_batch=float(np.mean([s.batch_size for s in ok])) if ok else float("nan"),
    )


def as_json(pipeline: list[PipelinePoint], http: list[HttpPoint], **extra: Any) -> dict[str, Any]:
    return {"pipeline": [asdict(p) for p in pipeline], "http": [asdict(h) for h in http], **extra}


def plot(pipeline: list[PipelinePoint], http: list[HttpPoint], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(
        [p.batch for p in pipeline],
        [p.images_per_s for p in pipeline],
        "o-",
        label="raw pipeline (in-process)",
    )
    for h in http:
        left.axhline(
            h.images_per_s,
            linestyle="--",
            label=f"HTTP {h.label}, {h.clients} clients",
            color="tab:green" if "on" in h.label else "tab:red",
        )
    left.set_xlabel("batch size")
    left.set_ylabel("images / s")
    left.set_xscale("log", base=2)
    left.legend(fontsize=8)
    labels = [f"{h.label}\n{h.clients} cl." for h in http]
    x = np.arange(len(http))
    for k, (q, name) in enumerate(((0, "p50"), (1, "p95"), (2, "p99"))):
        values = [(h.p50_ms, h.p95_ms, h.p99_ms)[q] for h in http]
        right.bar(x + (k - 1) * 0.27, values, 0.27, label=name)
    right.set_xticks(x, labels, fontsize=8)
    right.set_ylabel("latency, ms")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def bench_requests(url: str, images: list[bytes], total: int, clients: int) -> int:
    """Send exactly ``total`` requests over ``clients`` connections; return the error count."""
    remaining = total
    errors = 0

    async def worker(client: httpx.AsyncClient, k: int) -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            r = await client.post("/detect", files={"image": ("i.jpg", images[k % len(images)])})
            errors += r.status_code != 200
            k += 1

    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        await asyncio.gather(*(worker(client, k) for k in range(clients)))
    return errors
