"""Engines with injected faults, loaded by a real server through ``DETECT_ENGINE_FACTORY``.

``FAULT_FAIL_BATCHES``: comma-separated batch numbers (1-based) that raise a recoverable error.
``FAULT_FATAL_AFTER``: after this many good batches, every batch raises a fatal error.
``FAULT_DELAY_S``: extra seconds per batch (makes overload and drain tests deterministic).
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np

from engines.artifacts.variants import ServableVariant
from engines.errors import InferenceError
from engines.runtime.base import Engine, EngineOptions
from service.registry import open_variant


class FaultyEngine:
    def __init__(self, inner: Engine) -> None:
        self._inner = inner
        self._batches = 0
        self._lock = threading.Lock()
        self._fail = {int(b) for b in os.environ.get("FAULT_FAIL_BATCHES", "").split(",") if b}
        fatal = os.environ.get("FAULT_FATAL_AFTER")
        self._fatal_after = int(fatal) if fatal else None
        self._delay = float(os.environ.get("FAULT_DELAY_S", "0"))

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def warmup(self) -> None:
        self._inner.warmup()

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with self._lock:
            self._batches += 1
            n = self._batches
        if n in self._fail:
            raise InferenceError(f"injected failure in batch {n}")
        if self._fatal_after is not None and n > self._fatal_after:
            raise InferenceError("injected fatal error: device lost", fatal=True)
        time.sleep(self._delay)
        return self._inner.infer(batch)


def faulty(variant: ServableVariant, options: EngineOptions) -> Engine:
    inner = open_variant(variant, options)
    return FaultyEngine(inner)  # type: ignore[return-value]
