"""Which precision answers a request.

``fp32|fp16|int8`` name a variant explicitly (400 if the model has no accepted variant of that
precision). ``auto`` serves the fastest accepted variant whose measured agreement with FP32 meets
the *auto* budget (stricter than the acceptance budget). Under queueing pressure (the queue wait
of the variant ``auto`` sends to stays above the SLO) it moves to the fastest accepted variant,
when that one is clearly faster; it moves back once the wait has fallen well below the SLO, or
once no batch has run for a while (hysteresis and a hold time, so it does not flap).

"Fastest" is judged on live figures (``service.speed.LiveSpeed``: measured on this host at
warm-up and kept current by every batch), never on the build's timings alone: a build timed on
a busy or different machine once made INT8 look no faster than FP32, and ``auto`` never moved.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from engines.artifacts.record import VariantRecord
from engines.precision import AUTO, Precision
from service.errors import PrecisionUnavailable
from service.speed import LiveSpeed, first_guess

# Move under pressure only to a variant at least this much faster per image (noise in the live
# figures must not send traffic to a variant that is not really faster).
FASTER_MARGIN = 0.9


class PrecisionSelector:
    """Per-model precision policy, fed with queue waits by the scheduler's observer."""

    def __init__(
        self,
        variants: Sequence[VariantRecord],
        *,
        auto_min_agreement: float,
        queue_wait_slo_s: float,
        saturation_batch: int,
        recover_fraction: float = 0.5,
        hold_s: float = 2.0,
        speeds: Mapping[Precision, LiveSpeed] | None = None,
    ) -> None:
        if not variants:
            raise ValueError("a model needs at least one servable variant")
        self._records = {v.precision: v for v in variants}
        given = dict(speeds or {})
        # Without live figures (tests, tools), the build's timings are the only guess there is.
        self._speeds = {p: given.get(p) or first_guess(r) for p, r in self._records.items()}
        self._min_agreement = auto_min_agreement
        self._batch = saturation_batch
        self._slo_s = queue_wait_slo_s
        self._recover_s = queue_wait_slo_s * recover_fraction
        self._hold_s = hold_s
        self._pressured = False
        self._last_move = self._last_sample = -math.inf  # never (a monotonic clock may start at 0)
        self._wait_ewma: dict[Precision, float] = {}
        self._lock = threading.Lock()
        # Why `auto` must avoid a precision right now (the live precision audit sets this);
        # None = no objection. Explicit requests for the precision are still served.
        self.demoted: Callable[[Precision], str | None] = lambda _precision: None

    @property
    def under_pressure(self) -> bool:
        return self._pressured

    def _per_image_s(self, precision: Precision, batch: int) -> float:
        # Unmeasured variants sort last: never move *to* something we cannot show is faster.
        seconds = self._speeds[precision].per_image_s(batch)
        return seconds if seconds is not None else float("inf")

    def preferred(self) -> Precision:
        """At rest: the fastest variant (alone, batch 1) within the auto agreement budget."""
        within = [p for p in self._records if self._within_budget(p)]
        return min(within or list(self._records), key=lambda p: self._per_image_s(p, 1))

    def _within_budget(self, precision: Precision) -> bool:
        """Agrees with FP32 at least as well as ``auto`` demands (the budget itself included)."""
        return (self._records[precision].agreement or 0.0) >= self._min_agreement

    def fastest(self) -> Precision:
        """Under pressure: the accepted variant that serves the most images per second (full
        batches), if it is clearly faster than the preferred one; else the preferred one."""
        rest = self.preferred()
        best = min(self._records, key=lambda p: self._per_image_s(p, self._batch))
        faster = self._per_image_s(best, self._batch) < (
            FASTER_MARGIN * self._per_image_s(rest, self._batch)
        )
        return best if faster else rest

    @property
    def auto_choice(self) -> Precision:
        with self._lock:
            now = time.monotonic()
            # No batch for a while means no pressure: a client that comes back after a burst
            # must not be served by the burst's choice.
            if self._pressured and now - self._last_sample > max(self._hold_s, 1.0) * 2:
                self._relieve(now)
            return self._choice()

    def _choice(self) -> Precision:
        choice = self.fastest() if self._pressured else self.preferred()
        if self.demoted(choice) is None:
            return choice
        # The audit objects: the at-rest choice, else the fastest variant within the auto
        # budget, else any, that it does not object to. FP32 (its reference) is never demoted.
        by_speed = sorted(self._records, key=lambda p: self._per_image_s(p, self._batch))
        proven = [p for p in by_speed if self._within_budget(p)]
        fallbacks = [self.preferred(), *proven, *by_speed]
        return next((p for p in fallbacks if self.demoted(p) is None), choice)

    def select(self, requested: str, reasons: Mapping[Precision, str] | None = None) -> Precision:
        """Resolve a requested precision; ``reasons`` explains unavailable ones (from the build)."""
        if requested == AUTO:
            return self.auto_choice
        try:
            precision = Precision(requested)
        except ValueError:
            raise PrecisionUnavailable(
                f"unknown precision {requested[:32]!r}; use fp32, fp16, int8 or auto"
            ) from None
        if precision not in self._records:
            why = (reasons or {}).get(precision, "it was not built")
            served = ", ".join(p.value for p in self._records)
            raise PrecisionUnavailable(
                f"precision {precision.value} is not served for this model ({why}); "
                f"served: {served}"
            )
        return precision

    def observe_queue_wait(self, precision: Precision, wait_s: float) -> None:
        """Feed one queue-wait sample (the longest wait of a batch); may move the auto choice."""
        with self._lock:
            now = time.monotonic()
            previous = self._wait_ewma.get(precision, wait_s)
            self._wait_ewma[precision] = previous + 0.3 * (wait_s - previous)
            if precision != self._choice():
                return
            self._last_sample = now
            if now - self._last_move < self._hold_s:
                return
            wait = self._wait_ewma[precision]
            if not self._pressured and wait > self._slo_s and self.fastest() != precision:
                self._pressured = True
                self._last_move = now
            elif self._pressured and wait < self._recover_s:
                self._relieve(now)

    def _relieve(self, now: float) -> None:
        self._pressured = False
        self._last_move = now
        # The preferred variant's old average predates the pressure: start it fresh.
        self._wait_ewma.pop(self.preferred(), None)
