"""The real server with an INT8 engine that drifts, for the precision-audit tests.

``python -m tests.service.drift_engines serve`` (``module=DRIFT_SERVER`` with ``server_factory``)
runs ``detect-serve`` after wrapping every INT8 engine the registry opens in ``DriftingEngine``;
like ``tests.service.fault_engines``, production code has no hook for it.

The real INT8 engine answers the first ``DRIFT_AFTER`` batches unchanged; after that every output
value is multiplied by ``DRIFT_SCALE`` (default 0.8: boxes shrink toward the origin and scores
fall), the way a quantized model can quietly go wrong on traffic unlike its calibration set.
Other precisions are the real engines, untouched, unless ``DRIFT_SLOW_OTHERS`` (a factor) makes
them that many times slower, so that `auto`, which ranks variants on speed measured on this
host, really prefers INT8 on a busy machine too. The server's warm-up speed measurement runs on
the inner INT8 engine, so batch counting starts at the first request.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from engines.precision import Precision
from engines.runtime.base import Engine
from service import registry, speed

DRIFT_SERVER = "tests.service.drift_engines"


class DriftingEngine:
    def __init__(self, inner: Engine) -> None:
        self._inner = inner
        self._batches = 0
        self._lock = threading.Lock()
        self._after = int(os.environ.get("DRIFT_AFTER", "0"))
        self._scale = np.float32(os.environ.get("DRIFT_SCALE", "0.8"))

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def warmup(self) -> None:
        self._inner.warmup()

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with self._lock:
            self._batches += 1
            drifted = self._batches > self._after
        outputs = self._inner.infer(batch)
        return {k: v * self._scale for k, v in outputs.items()} if drifted else outputs


class SlowEngine:
    """A real engine that takes ``factor`` times its own time per batch."""

    def __init__(self, inner: Engine, factor: float) -> None:
        self._inner = inner
        self._factor = factor

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def warmup(self) -> None:
        self._inner.warmup()

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        outputs = self._inner.infer(batch)
        time.sleep((self._factor - 1) * (time.perf_counter() - started))
        return outputs


def install() -> None:
    """Wrap every INT8 engine the registry of this process opens."""
    choose = registry.engine_factory

    def with_drift(*args: Any, **kwargs: Any) -> Callable[..., Engine]:
        opens = choose(*args, **kwargs)

        def open_drifting(*args: Any, **kwargs: Any) -> Engine:
            engine = opens(*args, **kwargs)
            if engine.precision is not Precision.INT8:
                slow = float(os.environ.get("DRIFT_SLOW_OTHERS", "1"))
                return SlowEngine(engine, slow) if slow > 1 else engine  # type: ignore[return-value]
            return DriftingEngine(engine)  # type: ignore[return-value]

        return open_drifting

    registry.engine_factory = with_drift  # type: ignore[assignment]
    measure = speed.measure_engine

    def measure_inner(engine: Engine, *args: Any, **kwargs: Any) -> dict[int, float]:
        # The warm-up speed measurement is not traffic: it must not count towards DRIFT_AFTER.
        inner = engine._inner if isinstance(engine, DriftingEngine) else engine
        return measure(inner, *args, **kwargs)

    speed.measure_engine = measure_inner


if __name__ == "__main__":
    from service.cli import main

    install()
    raise SystemExit(main())
