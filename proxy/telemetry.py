"""Logging setup; later also spans and metrics. Attribute names will live here, in one place."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(json: bool = True, level: int = logging.INFO) -> None:
    """structlog to stderr: JSON lines for machines, aligned key=value for a terminal."""
    renderer: structlog.typing.Processor = structlog.processors.JSONRenderer()
    if not json:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
