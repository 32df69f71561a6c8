"""Output for people (tables, colour on a TTY, NO_COLOR) and for scripts (--json)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

import click


def use_color(stream: Any = None) -> bool:
    stream = stream or sys.stdout
    return not os.environ.get("NO_COLOR") and hasattr(stream, "isatty") and stream.isatty()


def style(text: str, **kw: Any) -> str:
    return click.style(text, **kw) if use_color() else text


STATUS_COLORS = {"idle": "green", "running": "cyan", "permission_prompt": "yellow", "stalled": "magenta",
                 "pending": "blue", "crashed": "red", "killed": "red", "completed": "white"}


def status_text(status: str) -> str:
    return style(status, fg=STATUS_COLORS.get(status))


def short_id(sid: str) -> str:
    return sid[:8]


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def age(ms: int | None) -> str:
    if not ms:
        return "-"
    s = max(0, int(time.time() - ms / 1000))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def table(headers: list[str], rows: Iterable[list[str]]) -> None:
    rows = list(rows)
    widths = [len(h) for h in headers]
    plain = [[click.unstyle(c) for c in r] for r in rows]
    for r in plain:
        widths = [max(w, len(c)) for w, c in zip(widths, r)]
    click.echo("  ".join(style(h.upper().ljust(w), bold=True) for h, w in zip(headers, widths)).rstrip())
    for r, p in zip(rows, plain):
        click.echo("  ".join(c + " " * (w - len(pc)) for c, pc, w in zip(r, p, widths)).rstrip())


def one_line(value: Any, limit: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
