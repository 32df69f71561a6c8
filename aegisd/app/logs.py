"""structlog setup: readable console lines for people, JSON lines for journald and files (`logFormat`: auto picks
JSON under systemd, where JOURNAL_STREAM is set, or when stdout is not a terminal). Stdlib loggers (hypercorn, ...)
go through the same pipeline."""

from __future__ import annotations

import logging
import os
import sys

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "warn": logging.WARNING,
           "error": logging.ERROR}


def wants_json(log_format: str = "auto", stream: object = None) -> bool:
    if log_format in ("json", "console"):
        return log_format == "json"
    out = stream or sys.stdout
    return bool(os.environ.get("JOURNAL_STREAM")) or not getattr(out, "isatty", lambda: False)()


def setup_logging(level: str = "info", *, stream: object = None, json: bool | None = None) -> None:
    out = stream or sys.stdout
    if json is None:
        json = not getattr(out, "isatty", lambda: False)()
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=True))
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)  # type: ignore[arg-type]
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level.lower(), logging.INFO))
    # httpx logs every request's full URL at INFO: bot tokens (Telegram), secret webhook URLs (Slack), IdP
    # URLs. Our own log lines say what was delivered where, with secrets masked; theirs stay at WARNING.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
