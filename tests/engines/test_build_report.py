"""The builder's progress output: redrawn bars on a terminal, one final line per bar in logs."""

from __future__ import annotations

import io

from engines.build.report import Reporter


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(stream: io.StringIO) -> str:
    reporter = Reporter(True, stream)
    with reporter.bar("calibration", 3) as tick:
        for _ in range(3):
            tick(1)
    reporter.say("int8: accepted")
    return stream.getvalue()


def test_log_output_has_one_line_per_bar_without_carriage_returns() -> None:
    lines = _run(io.StringIO()).splitlines()
    assert "\r" not in "".join(lines)
    assert len(lines) == 2
    assert "3/3" in lines[0] and lines[1].strip() == "int8: accepted"


def _screen(text: str) -> list[str]:
    """What a terminal shows: a carriage return starts its line over."""
    lines = []
    for line in text.split("\n"):
        shown = ""
        for part in line.split("\r"):
            shown = part + shown[len(part) :]
        lines.append(shown)
    return [line for line in lines if line.strip()]


def test_terminal_output_redraws_the_bar_in_place() -> None:
    text = _run(_Terminal())
    assert "1/3" in text and "2/3" in text  # the bar moved while it ran ...
    screen = _screen(text)
    assert len(screen) == 2  # ... on one line, which ends up showing the finished bar
    assert "3/3" in screen[0] and "1/3" not in screen[0]
    assert screen[1].strip() == "int8: accepted"


def test_disabled_reporter_prints_nothing() -> None:
    stream = io.StringIO()
    reporter = Reporter(False, stream)
    with reporter.bar("timing", 2) as tick:
        tick(2)
    reporter.say("quiet")
    assert stream.getvalue() == ""
