"""Log lines as Prometheus writes its own: logfmt or JSON, one event per line.

``ts`` is RFC 3339 in UTC with milliseconds, ``level`` is Prometheus' word (``warn``, not
``warning``), ``caller`` the logger's name and ``msg`` the message; an exception adds ``err``.
logfmt values are quoted as go-logfmt quotes them (a space, ``=``, ``"``, a control character
or an empty value), so a line reads back with any logfmt parser.

A small formatter of our own rather than a library: the logfmt and JSON packages on PyPI
each need their time and level handling overridden to say what Prometheus says, and the two
formats then differ in which fields they carry; here both come from one ``fields`` function.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

LOG_FORMATS = ("logfmt", "json")
_LEVEL_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "error",
}
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def fields(record: logging.LogRecord) -> dict[str, str]:
    """The fields of one line, in the order they are written."""
    moment = datetime.fromtimestamp(record.created, UTC)
    out = {
        "ts": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": _LEVEL_NAMES.get(record.levelno, record.levelname.lower()),
        "caller": record.name,
        "msg": record.getMessage(),
    }
    if record.exc_info:
        out["err"] = logging.Formatter().formatException(record.exc_info)
    return out


def logfmt_value(value: str) -> str:
    """``value`` as a logfmt value: bare when it can be, else quoted with escapes."""
    if value and not any(char <= " " or char in '="' or char == "\x7f" for char in value):
        return value
    escaped = "".join(
        _ESCAPES.get(char, f"\\u{ord(char):04x}" if char < " " else char) for char in value
    )
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={logfmt_value(value)}" for key, value in fields(record).items())


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(fields(record), ensure_ascii=False)


def configure_logging(level: str, log_format: str = "logfmt") -> None:
    """Every logger writes one line per event to stderr in ``log_format``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if log_format == "json" else LogfmtFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
