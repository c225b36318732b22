"""Structured logging: JSON lines in production, readable lines on a terminal.

Every event carries the request id of the request being served (bound with
structlog's contextvars). Log calls name fields, never their values: no record
value, token or query string is ever passed to a logger, and exception records
carry the exception's class and stack frames, not its message or locals (a
driver's message can quote SQL parameters).
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

LogFormat = Literal["json", "console"]


def _exception_summary(
    _logger: object, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replace `exc_info` with the exception class and frames (no message, no locals)."""
    exc_info = event.pop("exc_info", None)
    if exc_info:
        if exc_info is True:
            exc_info = sys.exc_info()
        elif isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        _type, _value, tb = exc_info
        if _type is not None:
            event["error_type"] = f"{_type.__module__}.{_type.__qualname__}"
            event["stack"] = [
                f"{frame.filename}:{frame.lineno} in {frame.name}"
                for frame in traceback.extract_tb(tb)
            ]
    return event


def configure_logging(fmt: LogFormat = "console", level: str = "INFO") -> None:
    """Configure structlog and the standard library's root logger once per process."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _exception_summary,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Third-party loggers (uvicorn, alembic) go to stderr at the same level; uvicorn's
    # own access log is replaced by Bastion's, which never includes query strings.
    logging.basicConfig(
        level=numeric, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("uvicorn.access").disabled = True
