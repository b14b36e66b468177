"""What `detect-serve build` shows: progress bars while it works, a summary table at the end."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from engines.artifacts.manifest import Manifest
from engines.artifacts.record import VariantRecord

log = logging.getLogger(__name__)
BAR_WIDTH = 24


class Reporter:
    """Progress lines and bars on stderr (or only the log, when ``enabled`` is False)."""

    def __init__(self, enabled: bool, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self._line_open = False  # a bar is drawn on the current line, without a newline yet
        # Redrawing with \r only makes sense on a terminal; logs and CI get each bar's last state.
        self._live = bool(getattr(self.stream, "isatty", lambda: False)())

    def say(self, message: str) -> None:
        log.info("%s", message)
        if self.enabled:
            self._end_line()
            print(f"  {message}", file=self.stream, flush=True)

    def _end_line(self) -> None:
        if self._line_open:
            print(file=self.stream, flush=True)
            self._line_open = False

    @contextlib.contextmanager
    def bar(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
        """A bar for ``total`` steps; the yielded ``tick(n)`` advances it by n."""
        done, started, finished = 0, time.perf_counter(), False

        def draw() -> None:
            filled = BAR_WIDTH * min(done, total) // max(total, 1)
            start = "\r" if self._live else ""
            line = (
                f"{start}  {label:<30} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
                f"{min(done, total)}/{total} {time.perf_counter() - started:5.1f}s"
            )
            print(line, end="", file=self.stream, flush=True)
            self._line_open = True

        def tick(n: int) -> None:
            nonlocal done, finished
            done += n
            if self.enabled and not finished and (self._live or done >= total):
                draw()
                if done >= total:  # later ticks (a re-read of the set) change nothing
                    finished = True
                    self._end_line()

        try:
            yield tick
        finally:
            if self.enabled and not finished:
                draw()
                self._end_line()


def _cell(value: float | None, fmt: str) -> str:
    return format(value, fmt) if value is not None else format("-", fmt.split(".")[0] + "s")


def _status(variant: VariantRecord) -> str:
    return variant.status if variant.accepted else variant.status.upper()


def summary_table(manifest: Manifest) -> str:
    header = (
        f"{'backend':<11} {'precision':<9} {'status':<10} {'mAP50-95 agr':>12} {'mAP50 agr':>9} "
        f"{'float nodes':>11} {'ms @1':>8} {'ms @max':>8} {'img/s':>7}  artifact"
    )
    lines = [
        f"model {manifest.model} ({manifest.layout}, {manifest.input_size[0]}x"
        f"{manifest.input_size[1]}, source sha256 {manifest.source_sha256[:12]})",
        header,
        "-" * len(header),
    ]
    for v in manifest.variants:
        acc = v.accuracy
        latency = v.latency_ms
        top = max(latency) if latency else None
        lines.append(
            f"{v.backend:<11} {v.precision.value:<9} {_status(v):<10} "
            f"{_cell(acc.map50_95_agreement if acc else None, '>12.4f')} "
            f"{_cell(acc.map50_agreement if acc else None, '>9.4f')} {len(v.kept_float):>11} "
            f"{_cell(latency.get(1), '>8.1f')} "
            f"{_cell(latency[top] if top else None, '>8.1f')} "
            f"{_cell(top * 1000 / latency[top] if top else None, '>7.1f')}  {v.artifact or '-'}"
        )
        if not v.accepted:
            lines.append(f"{'':<22}why: {v.reason}")
    return "\n".join(lines)
