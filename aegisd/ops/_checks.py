"""Looking at what a session built: the project's checks (type check, build, tests) run in its workDir, and a
screenshot of a web page such as its dev server."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from aegisd.core.errors import ValidationError
from aegisd.core.models import now_ms
from aegisd.ops._registry import OpContext, op
from aegisd.ops._types import SessionRef


class VerifyParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    criticalOnly: bool | None = None  # only typecheck/build steps (default: the config's)


class ScreenshotParams(msgspec.Struct, forbid_unknown_fields=True):
    id: SessionRef
    url: str | None = None
    fullPage: bool = False
    width: Annotated[int, msgspec.Meta(ge=1, le=7680)] | None = None
    height: Annotated[int, msgspec.Meta(ge=1, le=4320)] | None = None


class Verification(msgspec.Struct):
    ok: bool
    steps: list[dict[str, Any]]  # {name, command, ok, exitCode, error?, durationMs, output}
    skipped: list[str]
    totalDurationMs: int
    summary: str
    criticalOnly: bool


class Screenshot(msgspec.Struct):
    screenshot: str  # PNG, base64
    width: int
    height: int
    url: str
    timestamp: int
    fullPage: bool
    blockedRequests: list[str]  # requests the page made that were refused
    loadError: str | None  # the navigation's error, if it failed (the error page is what is captured)


@op("session.verify", VerifyParams, result=Verification, permission="send",
    summary="Run the project's checks (type check, build, tests: configured or found from its files) in the "
            "session's workDir; 422 VERIFICATION_FAILED with the same result when one fails")
async def verify(ctx: OpContext, p: VerifyParams) -> Verification:
    from aegisd.core.errors import VerificationFailed

    rec = ctx.session(p.id)
    out = await ctx.services.verifier.run(rec, critical_only=p.criticalOnly)
    ctx.audit("session.verify", session_id=rec.id, detail={"ok": out["ok"], "summary": out["summary"]})
    if not out["ok"]:
        raise VerificationFailed(out["summary"], details=out)
    return Verification(**out)


@op("session.screenshot", ScreenshotParams, result=Screenshot, permission="send",
    summary="PNG screenshot (base64) of a web page, such as the session's dev server, in headless Chromium; "
            "501 without a browser")
async def screenshot(ctx: OpContext, p: ScreenshotParams) -> Screenshot:
    from aegisd.browser import screenshot as shots

    ctx.session(p.id)
    if not p.url:
        raise ValidationError("url is required")
    browser = shots.find_browser(ctx.services.environ)
    if browser is None:
        raise shots.unavailable(ctx.services.environ)
    pr = ctx.principal
    # the daemon's own listeners are refused to every screenshot; loopback only to a trusted caller
    reach = await shots.Reach.build(p.url, trusted=pr.role == "admin" or pr.kind in ("local", "master"),
                                    daemon_urls=(ctx.services.http_url, *ctx.services.http_binds),
                                    loopback_ports=ctx.services.config.screenshotLoopbackPorts)
    width, height = p.width or 1280, p.height or 720
    async with ctx.services.screenshot_limiter:
        png, blocked, load_error = await shots.take(p.url, width=width, height=height, reach=reach,
                                                    browser=browser, lifeline=ctx.services.lifeline,
                                                    full_page=p.fullPage)
    ctx.services.manager.metrics.screenshots += 1
    return Screenshot(**shots.encode(png), url=p.url, timestamp=now_ms(), fullPage=p.fullPage,
                      blockedRequests=blocked, loadError=load_error)
