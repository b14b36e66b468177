"""The real server with fault-injecting engines, for tests.

``python -m tests.service.fault_engines serve`` (``module=FAULT_SERVER`` with ``server_factory``)
runs ``detect-serve`` after wrapping every engine the registry opens in ``FaultyEngine``.
Production code has no hook for this: the wrapping happens here, in the server's own process,
before the app is built.

``FAULT_FAIL_BATCHES``: comma-separated batch numbers (1-based) that raise a recoverable error.
``FAULT_FATAL_AFTER``: after this many good batches, every batch raises a fatal error.
``FAULT_DELAY_S``: extra seconds per batch (makes overload and drain tests deterministic).
``FAULT_SLOWDOWN``: each batch takes this many times its real engine time (a slower device,
whatever the machine's load).
``FAULT_DELAY_PRECISIONS``: comma-separated precisions the delay and slowdown apply to (default:
all), so a stand-in FP32 can be made slow while INT8 runs at its real speed.
The warm-up speed measurement (``service.speed.measure_engine``) runs with the delay but is not
counted as batches, so batch numbers start at the first served batch.
``FAULT_GATE_FILE``: every batch waits until this file exists (a test holds requests in flight
for as long as it needs, then releases them by creating the file).
``DETECT_CONCURRENT_BATCHES`` defaults to 1 here (one batch at a time on the stand-in device).
``FAULT_GARBLE_BATCHES``: batch numbers whose outputs come back as complex numbers, a dtype no
protocol carries (a failure that only shows after inference).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engines.errors import InferenceError
from engines.runtime.base import Engine
from service import registry, speed

FAULT_SERVER = "tests.service.fault_engines"
GATE_TIMEOUT_S = 120.0


def _batches(variable: str) -> set[int]:
    return {int(b) for b in os.environ.get(variable, "").split(",") if b}


class FaultyEngine:
    def __init__(self, inner: Engine) -> None:
        self._inner = inner
        self._batches = 0
        self._lock = threading.Lock()
        self._fail = _batches("FAULT_FAIL_BATCHES")
        self._garble = _batches("FAULT_GARBLE_BATCHES")
        fatal = os.environ.get("FAULT_FATAL_AFTER")
        self._fatal_after = int(fatal) if fatal else None
        delayed = os.environ.get("FAULT_DELAY_PRECISIONS", "")
        applies = not delayed or inner.precision.value in delayed.split(",")
        self._delay = float(os.environ.get("FAULT_DELAY_S", "0")) if applies else 0.0
        self._slowdown = float(os.environ.get("FAULT_SLOWDOWN", "1")) if applies else 1.0
        self.counting = True
        gate = os.environ.get("FAULT_GATE_FILE")
        self._gate = Path(gate) if gate else None

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def warmup(self) -> None:
        self._inner.warmup()

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if not self.counting:  # the warm-up speed measurement: real speed, no faults
            return self._slow(batch)
        with self._lock:
            self._batches += 1
            n = self._batches
        self._wait_for_gate()
        if n in self._fail:
            raise InferenceError(f"injected failure in batch {n}")
        if self._fatal_after is not None and n > self._fatal_after:
            raise InferenceError("injected fatal error: device lost", fatal=True)
        outputs = self._slow(batch)
        if n in self._garble:
            return {k: v.astype(np.complex64) for k, v in outputs.items()}
        return outputs

    def _slow(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        time.sleep(self._delay)
        started = time.perf_counter()
        outputs = self._inner.infer(batch)
        time.sleep((self._slowdown - 1) * (time.perf_counter() - started))
        return outputs

    def _wait_for_gate(self) -> None:
        if self._gate is None:
            return
        give_up = time.monotonic() + GATE_TIMEOUT_S  # a test that died must not hang the server
        while not self._gate.exists() and time.monotonic() < give_up:
            time.sleep(0.01)


def install() -> None:
    """Wrap every engine the registry of this process opens (whatever the backend)."""
    choose = registry.engine_factory

    def with_faults(*args: Any, **kwargs: Any) -> Callable[..., Engine]:
        opens = choose(*args, **kwargs)

        def open_faulty(*args: Any, **kwargs: Any) -> Engine:
            return FaultyEngine(opens(*args, **kwargs))  # type: ignore[return-value]

        return open_faulty

    registry.engine_factory = with_faults  # type: ignore[assignment]
    measure = speed.measure_engine

    def measure_uncounted(engine: Engine, *args: Any, **kwargs: Any) -> dict[int, float]:
        faulty = engine if isinstance(engine, FaultyEngine) else None
        if faulty is not None:
            faulty.counting = False
        try:
            return measure(engine, *args, **kwargs)
        finally:
            if faulty is not None:
                faulty.counting = True

    speed.measure_engine = measure_uncounted


if __name__ == "__main__":
    from service.cli import main

    # The stand-in device runs one batch at a time unless a test says otherwise: the overload,
    # drain and deadline tests reason about one slot (the CPU default is several).
    os.environ.setdefault("DETECT_CONCURRENT_BATCHES", "1")
    install()
    raise SystemExit(main())
