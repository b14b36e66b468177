"""Log set-up: plain text or one JSON object per line, every record with its request ID."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Literal

from service.request_id import RequestIdFilter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "request_id", "message"}`` (+ ``exception``) per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, fmt: Literal["text", "json"] = "text") -> None:
    """Replace the root handlers with one stderr handler in ``fmt``; uvicorn's loggers
    propagate to it (the server is started with ``log_config=None``)."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx logs every request at INFO: the bench's load generator and URL fetching would drown
    # the service's own lines. Their warnings still show; --log-level debug shows everything.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel("DEBUG" if level.upper() == "DEBUG" else "WARNING")
