"""How ``personify serve`` and ``personify worker`` write their logs: one line per record on
standard error, as JSON (``PERSONIFY_LOG_FORMAT=json``, the default, for a log collector) or
as text for a person at a terminal (``text``), at ``PERSONIFY_LOG_LEVEL``.

Logging is the process's to configure (the app and the library code configure no handler):
an embedder or a test keeps its own. Every record's extra fields (``logger.info("request",
extra={...})``) become keys of the JSON object, or ``key=value`` pairs after the text line;
a record emitted while an HTTP request is handled also carries that request's id.

What goes into a record is the emitting code's responsibility: no event bodies, no user ids
and no credentials (the access log, ``personify.api.access_log``, shows how).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import msgspec

from personify.api.access_log import current_request_id
from personify.settings import Settings

__all__ = ["JsonFormatter", "RequestIdFilter", "TextFormatter", "configure_logging"]

# attributes every LogRecord has; anything else on a record came in through ``extra``
_STANDARD = frozenset(
    [
        *logging.LogRecord("", 0, "", 0, "", (), None).__dict__,
        "message",
        "asctime",
        "taskName",
        # uvicorn's copy of the message with terminal colours
        "color_message",
    ]
)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    fields = record.__dict__
    # a set difference runs in C; most records have no extra field at all
    extra = fields.keys() - _STANDARD
    return {key: value for key, value in fields.items() if key in extra} if extra else {}


# the formatted second of the last record: records come many to a second
_last_second: tuple[int, str] = (-1, "")


def _timestamp(record: logging.LogRecord) -> str:
    global _last_second
    second = int(record.created)
    if _last_second[0] != second:
        _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_last_second[1]}.{int(record.msecs):03d}Z"


class RequestIdFilter(logging.Filter):
    """Adds the id of the HTTP request being handled (if any) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "request_id" not in record.__dict__:
            request_id = current_request_id()
            if request_id is not None:
                record.request_id = request_id
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC), level, logger, message, the extra fields,
    and the traceback as ``exc`` when there is one."""

    _encoder = msgspec.json.Encoder(enc_hook=str)

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        document.update(_extras(record))
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return self._encoder.encode(document).decode()


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value …`` for a person reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{key}={value}" for key, value in extras.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class _PersonifyHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler ``configure_logging`` installs (and replaces when called again)."""


def configure_logging(settings: Settings) -> None:
    """Send every logger's records to standard error in the settings' format and level.

    Idempotent: a second call replaces the handler the first one installed; handlers
    installed by anyone else are left alone.
    """
    handler = _PersonifyHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _PersonifyHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # no format here shows the thread's or the process's name, and looking them up costs a
    # good part of each record (one per HTTP request)
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # uvicorn's loggers reach the root handler instead of keeping their own
    for name in ("uvicorn", "uvicorn.error"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    # except its access log, which writes the raw path (user ids) and the client's address:
    # ours replaces it. uvicorn logs access lines when this logger reaches any handler
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers.clear()
    uvicorn_access.propagate = False
