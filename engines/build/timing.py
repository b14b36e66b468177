"""In-process engine timing per batch size, after warm-up (figures for the manifest and `auto`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np

from engines.runtime.base import Engine, input_shape


def batch_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, ... up to and including ``max_batch``."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return [*sizes, max_batch]


def time_engine(
    engine: Engine,
    sizes: Sequence[int],
    *,
    input_size: tuple[int, int] | None = None,
    min_runs: int = 3,
    min_seconds: float = 1.0,
    on_size: Callable[[int], None] | None = None,
) -> dict[int, float]:
    """Median milliseconds of ``engine.infer`` per batch size (random input of the engine's
    shape, symbolic height/width at ``input_size``, one warm-up call per shape first);
    ``on_size(1)`` after each size."""
    rng = np.random.default_rng(0)
    medians: dict[int, float] = {}
    for size in sizes:
        shape = input_shape(engine.inputs[0], size, input_size)
        batch = rng.uniform(0, 1, shape).astype(np.float32)
        engine.infer(batch)  # warm-up for this shape
        runs: list[float] = []
        started = time.perf_counter()
        while len(runs) < min_runs or time.perf_counter() - started < min_seconds:
            t0 = time.perf_counter()
            engine.infer(batch)
            runs.append(time.perf_counter() - t0)
        medians[size] = round(statistics.median(runs) * 1000, 3)
        if on_size is not None:
            on_size(1)
    return medians
