"""Serving a test's own quart-trio app (a stand-in identity provider, chat API...) on a loopback port."""

from __future__ import annotations

from typing import Any

import trio


async def serve_app(app: Any, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve app on 127.0.0.1 (a free port) until cancelled; task_status gets its base URL."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    cfg = Config()
    cfg.bind = ["127.0.0.1:0"]
    cfg.accesslog = cfg.errorlog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, app, cfg)
        task_status.started(binds[0].rstrip("/"))
