"""How much device time the shadow runs may take: a token bucket of seconds."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class DeviceBudget:
    """Refills at ``rate`` device-seconds per second up to ``burst_s``.

    A run is allowed while the balance is positive and charged afterwards (its cost is only
    known then), so the balance may dip below zero once; over any long stretch the shadow runs
    use at most ``rate`` of the device plus one run.
    """

    def __init__(
        self,
        rate: float,
        burst_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"budget rate must be > 0, got {rate}")
        self._rate = rate
        # Ten seconds' worth: enough for one CPU shadow run at the 5% default, so a quiet server
        # audits its first sample at once instead of after a refill.
        self._burst = burst_s if burst_s is not None else rate * 10.0
        self._clock = clock
        self._balance = self._burst
        self._at = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._balance = min(self._burst, self._balance + (now - self._at) * self._rate)
        self._at = now

    def allows(self) -> bool:
        with self._lock:
            self._refill()
            return self._balance > 0

    def charge(self, seconds: float) -> None:
        with self._lock:
            self._refill()
            self._balance -= seconds
