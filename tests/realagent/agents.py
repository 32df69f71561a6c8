"""Where the real agents are, and the environment they need to run offline against the mock."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from aegisd.sessions._agents import npm_prefix


def claude_agent_command() -> list[str] | None:
    entry = npm_prefix() / "node_modules" / "@agentclientprotocol" / "claude-agent-acp" / "dist" / "index.js"
    node = shutil.which("node")
    if entry.exists() and node:
        return [node, str(entry)]
    return None


def claude_agent_env(mock_url: str, home: Path) -> dict[str, str]:
    """Variables the agent config passes on top of the daemon's filtered environment."""
    home.mkdir(parents=True, exist_ok=True)
    return {"HOME": str(home), "ANTHROPIC_BASE_URL": mock_url, "ANTHROPIC_API_KEY": "sk-ant-mock-key",
            "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1", "DISABLE_AUTOUPDATER": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}


def python_sdk_echo_agent_command() -> list[str] | None:
    example = Path(sys.prefix) / "share" / "acp-examples" / "echo_agent.py"
    try:
        import acp  # noqa: F401
    except ImportError:
        return None
    return [sys.executable, str(example)] if example.exists() else None


SKIP_CLAUDE = "claude-agent-acp not installed: run `make agents` (scripts/install-agents.sh)"
SKIP_SDK = "ACP Python SDK examples not installed: run `make agents` (scripts/install-agents.sh)"
_ = os
