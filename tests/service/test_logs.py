"""Log set-up: one JSON object per line with the request ID, and no per-request client chatter."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from service.logs import configure_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    chatty = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in chatty.items():
        logging.getLogger(name).setLevel(old)


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_carry_the_request_id_and_httpx_requests_stay_out(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "json")
    logging.getLogger("httpx").info('HTTP Request: POST http://127.0.0.1/detect "200 OK"')
    logging.getLogger("httpx").warning("connection pool is full")
    logging.getLogger("service.example").info("loaded %s", "yolov3-tiny-coco")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["logger"], e["level"], e["message"]) for e in lines] == [
        ("httpx", "WARNING", "connection pool is full"),
        ("service.example", "INFO", "loaded yolov3-tiny-coco"),
    ]
    assert all(e["request_id"] == "-" for e in lines)  # outside a request


@pytest.mark.usefixtures("restore_logging")
def test_debug_level_shows_every_http_client_request(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("debug")
    logging.getLogger("httpx").info("HTTP Request: GET http://127.0.0.1/health/live")
    assert "HTTP Request: GET" in capsys.readouterr().err
