"""Structured logging for every command: one JSON object per line (or readable text).

Call :func:`setup_logging` once in a process entry point; modules use ``logging.getLogger``
and pass fields with ``extra={"fields": {...}}`` (or :func:`log_event`).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {}) or {}
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        base = f"{datetime.fromtimestamp(record.created).strftime('%H:%M:%S')} {record.levelname.lower():7s} {record.name}: {record.getMessage()}"
        out = f"{base} {extra}".rstrip()
        if record.exc_info:
            out += "\n" + self.formatException(record.exc_info)
        return out


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("kafka", "aiokafka", "faust", "mode", "urllib3", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # kafka-python 3 warns "Task ... ran for 0.66s (>0.100s threshold)" whenever a step of its IO
    # thread waited that long, which on a busy 2-core machine is the scheduler, not a fault (the
    # demo's log filled with them). Its errors still show; DEBUG shows everything.
    logging.getLogger("kafka.net.selector").setLevel(logging.DEBUG if level == "DEBUG" else logging.ERROR)


def log_event(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields) -> None:
    """Log ``msg`` with structured ``fields``."""
    logger.log(level, msg, extra={"fields": fields})
