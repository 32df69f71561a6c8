"""What went wrong with an agent, as one line a person can act on: the cause, then the fix.

Agents report failures as JSON-RPC errors on `session/prompt` (claude-agent-acp: -32000 "Authentication
required" without credentials, -32603 "Internal error: API Error: …" with `data.errorKind` for the provider's
errors) or by failing to start. The line goes to the session record (`lastError`), the `turn` event, the
transcript, `ag run`, `ag show` and the dashboard."""

from __future__ import annotations

import re
from typing import Any

from aegisd.core.models import LastError, now_ms

AUTH = "auth"
RATE_LIMIT = "rate_limit"
MODEL = "model"
AGENT_MISSING = "agent_missing"
AGENT = "agent"

_AUTH_RE = re.compile(r"authenticat|unauthori[sz]ed|invalid[ _-]?(x-)?api[ _-]?key|api key|/login|credential|"
                      r"\b401\b|oauth token", re.I)
_RATE_RE = re.compile(r"rate[ _-]?limit|too many requests|\b429\b|overloaded|\b529\b|quota", re.I)
_MODEL_RE = re.compile(r"model.{0,40}(not[ _-]?found|not available|does not exist|unknown|invalid)|"
                       r"(not[ _-]?found|unknown|invalid).{0,20}model|not_found_error", re.I)


def _fixes(agent: str) -> dict[str, str]:
    claude = agent == "claude"
    return {
        AUTH: ("run `claude login` as the daemon's user, or set ANTHROPIC_API_KEY in the daemon's environment "
               "(then restart it)") if claude else
              f"sign the {agent!r} agent in, or give it its API key through the agent's env in the config",
        RATE_LIMIT: "wait a minute and send again, or run fewer sessions at once",
        MODEL: "choose one of the models the agent offers (`ag show ID` lists them), or leave the model out",
        AGENT_MISSING: ("install it with `make install` or `ag doctor --fix` (claude-agent-acp from npm), or set "
                        "AEGIS_AGENT_COMMAND") if claude else
                       f"check the command of agent {agent!r} in the config (`ag doctor`)",
    }


def classify(code: int | None, message: str, data: Any = None) -> str:
    kind = str(data.get("errorKind") or "") if isinstance(data, dict) else ""
    text = f"{message} {kind} {data if isinstance(data, (str, dict)) else ''}"
    if code == -32000 or "auth" in kind or _AUTH_RE.search(text):
        return AUTH
    if "rate" in kind or "overload" in kind or _RATE_RE.search(text):
        return RATE_LIMIT
    if "model" in kind or _MODEL_RE.search(text):
        return MODEL
    return AGENT


def explain(kind: str, message: str, *, agent: str) -> LastError:
    """The record's lastError: what the agent said, and what to do about it."""
    said = message.strip().rstrip(".") or "failed"
    fix = _fixes(agent).get(kind)
    what = {AUTH: "the agent is not signed in to its model provider", RATE_LIMIT: "the model provider is "
            "rate-limiting this account", MODEL: "the model is not available", AGENT_MISSING: "the agent could "
            "not be started"}.get(kind)
    line = f"{what} ({said})" if what else f"the agent reported an error: {said}"
    if fix:
        line += f": {fix}"
    return LastError(kind=kind, message=line, at=now_ms())


def from_prompt_error(code: int | None, message: str, data: Any, *, agent: str) -> LastError:
    return explain(classify(code, message, data), message, agent=agent)
