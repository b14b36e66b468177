"""Which precision answers a request.

``fp32|fp16|int8`` name a variant explicitly (400 if the model has no accepted variant of that
precision). ``auto`` takes the fastest accepted variant whose measured agreement with FP32 meets
the *auto* budget (stricter than the acceptance budget), and under queueing pressure steps to a
faster accepted variant, stepping back once pressure has fallen well below the SLO (hysteresis, so
it does not flap).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence

from engines.artifacts.record import VariantRecord
from engines.precision import AUTO, Precision
from service.errors import PrecisionUnavailable


class PrecisionSelector:
    """Per-model precision policy, fed with queue waits by the scheduler's observer."""

    def __init__(
        self,
        variants: Sequence[VariantRecord],
        *,
        auto_min_agreement: float,
        queue_wait_slo_s: float,
        recover_fraction: float = 0.5,
        hold_s: float = 2.0,
    ) -> None:
        if not variants:
            raise ValueError("a model needs at least one servable variant")
        self._by_precision = {v.precision: v for v in variants}
        # Unmeasured variants sort last: never move *to* something we cannot prove is faster.
        fastest_first = sorted(
            variants,
            key=lambda v: v.per_image_latency_s if v.per_image_latency_s is not None else 1e9,
        )
        preferred = next(
            (v for v in fastest_first if (v.agreement or 0.0) >= auto_min_agreement),
            fastest_first[0],
        )
        start = fastest_first.index(preferred)
        # The auto ladder: the preferred variant, then every faster one, slowest to fastest.
        self._ladder = [preferred.precision] + [
            v.precision for v in reversed(fastest_first[:start])
        ]
        self._level = 0
        self._slo_s = queue_wait_slo_s
        self._recover_s = queue_wait_slo_s * recover_fraction
        self._hold_s = hold_s
        self._last_move = 0.0
        self._wait_ewma: dict[Precision, float] = {}
        self._lock = threading.Lock()
        # Where `auto` goes when its choice is demoted: variants within the auto budget.
        self._proven_fastest_first = [
            v.precision for v in fastest_first if (v.agreement or 0.0) >= auto_min_agreement
        ]
        # Why `auto` must avoid a precision right now (the live precision audit sets this);
        # None = no objection. Explicit requests for the precision are still served.
        self.demoted: Callable[[Precision], str | None] = lambda _precision: None

    @property
    def available(self) -> list[Precision]:
        return list(self._by_precision)

    @property
    def auto_choice(self) -> Precision:
        choice = self._ladder[self._level]
        if self.demoted(choice) is None:
            return choice
        # Step back down the ladder (slower, better proven), else the fastest one not demoted;
        # FP32 is the audit's reference and is never demoted.
        fallbacks = self._ladder[self._level :: -1] + self._proven_fastest_first
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
        if precision not in self._by_precision:
            why = (reasons or {}).get(precision, "it was not built")
            served = ", ".join(p.value for p in self._by_precision)
            raise PrecisionUnavailable(
                f"precision {precision.value} is not served for this model ({why}); "
                f"served: {served}"
            )
        return precision

    def observe_queue_wait(self, precision: Precision, wait_s: float) -> None:
        """Feed one queue-wait sample; may move the auto choice one step."""
        with self._lock:
            previous = self._wait_ewma.get(precision, wait_s)
            self._wait_ewma[precision] = previous + 0.3 * (wait_s - previous)
            if precision != self.auto_choice:
                return
            now = time.monotonic()
            if now - self._last_move < self._hold_s:
                return
            wait = self._wait_ewma[precision]
            if wait > self._slo_s and self._level + 1 < len(self._ladder):
                self._level += 1
                self._last_move = now
            elif wait < self._recover_s and self._level > 0:
                self._level -= 1
                self._last_move = now
                # The slower variant's old average predates the pressure: start it fresh.
                self._wait_ewma.pop(self._ladder[self._level], None)
