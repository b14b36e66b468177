"""OpenTelemetry spans around the request path, when OpenTelemetry is installed.

``pip install 'detect-serve[otel]'`` adds the API and SDK; configure the exporter the usual way
(``opentelemetry-instrument`` or an SDK ``TracerProvider`` set before the app starts). Without
the package, or without a configured provider, every span here is a no-op and costs nothing.
Spans: ``detect.request`` (one per request, any protocol) with ``decode``, ``queue``,
``inference`` and ``postprocess`` children per image.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

try:
    from opentelemetry import trace as _trace
except ImportError:  # the [otel] extra is not installed
    _trace = None  # type: ignore[assignment]

TRACER_NAME = "detect-serve"
Attributes = Mapping[str, str | int | float | bool]


@contextlib.contextmanager
def span(name: str, attributes: Attributes | None = None) -> Iterator[Any]:
    """A span covering the ``with`` block (None when tracing is unavailable)."""
    if _trace is None:
        yield None
        return
    tracer = _trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(name, attributes=attributes) as current:
        yield current


def past_span(
    name: str, started_s: float, ended_s: float, attributes: Attributes | None = None
) -> None:
    """A span for something already measured (``time.perf_counter()`` instants), such as the
    queue wait and engine time the batcher reports once the batch is done."""
    if _trace is None:
        return
    tracer = _trace.get_tracer(TRACER_NAME)
    # Span times are wall-clock nanoseconds; shift the perf_counter instants onto that clock.
    offset_ns = time.time_ns() - int(time.perf_counter() * 1e9)
    current = tracer.start_span(
        name, attributes=attributes, start_time=offset_ns + int(started_s * 1e9)
    )
    current.end(end_time=offset_ns + int(ended_s * 1e9))
