"""Read a running server's /metrics as numbers, and wait on them instead of sleeping."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Server

Samples = list[tuple[str, dict[str, str], float]]
Key = tuple[str, dict[str, str]]


def scrape(server: Server) -> Samples:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(samples: Samples, key: Key) -> float:
    """Sum of the samples named ``key[0]`` whose labels include ``key[1]``."""
    name, labels = key
    return sum(v for n, lbl, v in samples if n == name and labels.items() <= lbl.items())


def moved(before: Samples, after: Samples, key: Key) -> float:
    return value(after, key) - value(before, key)


def wait_until(condition: Callable[[], bool], message: str, timeout_s: float = 60) -> None:
    """Poll ``condition`` until true; fail with ``message`` after ``timeout_s``."""
    give_up = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < give_up, message
        time.sleep(0.02)


def wait_for(server: Server, key: Key, expected: float) -> None:
    wait_until(lambda: value(scrape(server), key) == expected, f"{key} never reached {expected}")
