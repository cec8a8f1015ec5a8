"""structlog set up once per process: JSON lines (or console on a tty), one canonical line per request."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import msgspec
import structlog

__all__ = ("configure_logging",)

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(
    level: Literal["debug", "info", "warning", "error"] = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    *,
    service: str | None = None,
) -> None:
    """Configure structlog for this process (to stderr). Call it once, from the entry point."""
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    encoder = msgspec.json.Encoder(enc_hook=repr)
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if console
        else structlog.processors.JSONRenderer(serializer=lambda obj, **_: encoder.encode(obj).decode())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # never locals: a request's scope holds its Authorization header
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    if service:
        structlog.contextvars.bind_contextvars(service=service)
