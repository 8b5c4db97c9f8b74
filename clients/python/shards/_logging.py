"""The services' logs: text for people, or one JSON object per line (``--log-format json``).

A JSON line has ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
and where one applies ``run_id``, ``scope_id``, ``process_id``, ``worker_id``
and ``controller_id``: from the call's ``extra=`` (``run_fields``), else from
the run whose code is logging (``run_context``: the worker sets it around each
run, so a process's own ``logging`` calls carry their run too). An exception
comes as ``exception`` (its traceback, one string).

No token or secret appears in a log line, in either format: the services
never log one, and ``Redact`` replaces, as a last guard, every ``Bearer ...``
credential and every secret a service registered (``register_secret``: the
worker's token, the controller's worker secret, the GUI's token) by
``[redacted]``.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
FIELDS = ("run_id", "scope_id", "process_id", "worker_id", "controller_id")
REDACTED = "[redacted]"

_RUN: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("shards_run", default=None)
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\",;]+")
_SECRETS: set[str] = set()


def run_fields(
    run_id: str = "", scope_id: str = "", process_id: str = "", worker_id: str = ""
) -> dict[str, str]:
    """``extra=`` for a log call about a run (empty values are left out)."""
    fields = {"run_id": run_id, "scope_id": scope_id, "process_id": process_id, "worker_id": worker_id}
    return {key: value for key, value in fields.items() if value}


def of_run(run: Any) -> dict[str, str]:
    """``extra=`` for a log call about ``run`` (anything with run_id, scope_id, process_id, worker_id)."""
    return run_fields(
        getattr(run, "run_id", ""),
        getattr(run, "scope_id", ""),
        getattr(run, "process_id", ""),
        getattr(run, "worker_id", ""),
    )


@contextlib.contextmanager
def run_context(**fields: str) -> Iterator[None]:
    """Every log line in here (this thread or task) carries ``fields`` (run_id, scope_id, process_id)."""
    token = _RUN.set({key: value for key, value in fields.items() if value})
    try:
        yield
    finally:
        _RUN.reset(token)


def set_run_context(**fields: str) -> None:
    """As ``run_context``, for a thread or task whose whole life is the run."""
    _RUN.set({key: value for key, value in fields.items() if value})


def register_secret(secret: str) -> None:
    """Never let ``secret`` reach a log line (short values are ignored: they would redact words)."""
    if len(secret) >= 8:
        _SECRETS.add(secret)


def redact(text: str) -> str:
    if "earer" in text or "EARER" in text:
        text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class Redact(logging.Filter):
    """Replaces credentials in a record's message (and its exception text) before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = _RUN.get()
        if context:
            line.update(context)
        for key in FIELDS:
            value = record.__dict__.get(key)
            if value:
                line[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


def setup(level: int = logging.INFO, log_format: str = "text") -> None:
    """Log to stderr in ``log_format`` (``text`` or ``json``), credentials redacted."""
    if log_format not in FORMATS:
        raise ValueError(f"--log-format is text or json, not {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(Redact())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
