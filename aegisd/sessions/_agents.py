"""Which command line runs a session's agent.

Order: `AEGIS_AGENT_COMMAND` (the default agent only) > the config's `agents:` table > the built-in `claude`
agent, i.e. `claude-agent-acp` from PATH, then from the project-managed npm prefix (`make install` and
`ag doctor --fix` fill it), then via `npx`."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import msgspec

from aegisd.core.config import CLAUDE_BIN, CLAUDE_PACKAGE, Config
from aegisd.core.errors import ValidationError


class AgentLaunch(msgspec.Struct, frozen=True):
    name: str
    command: list[str]
    env: dict[str, str] = {}
    pass_env: tuple[str, ...] = ()
    source: str = "builtin"


def npm_prefix() -> Path:
    """The project-managed npm prefix: $AEGIS_NPM_PREFIX, else inside the Python environment aegisd runs in."""
    env = os.environ.get("AEGIS_NPM_PREFIX")
    return Path(env) if env else Path(sys.prefix) / "lib" / "aegis-npm"


def find_claude_agent() -> tuple[list[str] | None, str]:
    """(command, where) for claude-agent-acp; command None when only npx could provide it."""
    on_path = shutil.which(CLAUDE_BIN)
    if on_path:
        return [on_path], "PATH"
    local = npm_prefix() / "node_modules" / ".bin" / CLAUDE_BIN
    if local.exists():
        return [str(local)], f"npm prefix {npm_prefix()}"
    return None, "not installed"


def resolve_agent(config: Config, name: str | None) -> AgentLaunch:
    agent = name or config.defaultAgent
    if agent == config.defaultAgent and config.agentCommand:
        return AgentLaunch(name=agent, command=list(config.agentCommand), source="env:AEGIS_AGENT_COMMAND")
    spec = config.agents.get(agent)
    if spec is not None:
        if not spec.command:
            raise ValidationError(f"agent {agent!r} has an empty command in the config")
        return AgentLaunch(name=agent, command=list(spec.command), env=dict(spec.env),
                           pass_env=tuple(spec.passEnv), source="config")
    if agent == "claude":
        cmd, where = find_claude_agent()
        if cmd is None:
            npx = shutil.which("npx") or "npx"
            cmd, where = [npx, "--yes", f"--package={CLAUDE_PACKAGE}", "--", CLAUDE_BIN], "npx"
        return AgentLaunch(name=agent, command=cmd, source=where)
    known = sorted({"claude", *config.agents})
    raise ValidationError(f"unknown agent {agent!r}; configured agents: {', '.join(known)}")
