"""`ag init` and the bootstrap `ag run` does: .aegis/config.yaml with commented defaults."""

from __future__ import annotations

import secrets
from pathlib import Path

import click

TEMPLATE = """\
# Aegis configuration ({name}). Precedence: defaults < this file < AEGIS_* environment < command-line flags.
# Reference: docs/architecture.md and README.md.

# Where the HTTP API listens. On a loopback host no token is needed (zero-config); any other host needs one.
host: {host}
port: {port}
{auth}
# Directories sessions may work in (realpath'd; edits apply without a restart).
# Empty = $HOME and the daemon's working directory (never /tmp or /var/tmp).
allowedWorkDirs: []

# default | plan | acceptEdits | bypassPermissions | dontAsk | auto
defaultPermissionMode: default

# The agent new sessions run. `claude` is claude-agent-acp (npm @agentclientprotocol/claude-agent-acp).
defaultAgent: claude
{model}
# Other ACP agents:
# agents:
#   gemini:
#     command: [gemini, --experimental-acp]
#     env: {{GEMINI_API_KEY: "..."}}

# A running turn with no agent activity for this long is reported as stalled (milliseconds).
stallThresholdMs: 120000

# file (default), postgres or redis
sessionStore: file
"""


def config_path(project: Path) -> Path:
    return project / ".aegis" / "config.yaml"


def _is_loopback(host: str) -> bool:
    from aegisd.daemon import is_loopback

    return is_loopback(host)


def render(*, host: str = "127.0.0.1", port: int = 9100, model: str | None = None, name: str | None = None,
           token: str | None = None) -> str:
    auth = f"# Bearer token for every route but /v1/health (keep it secret).\nauthToken: {token}\n" if token else ""
    model_line = f"# Model for new sessions (agents that support choosing one).\nmodel: {model}\n" if model else ""
    return TEMPLATE.format(name=name or "created by ag init", host=host, port=port, auth=auth, model=model_line)


def bootstrap_config(project: Path) -> Path | None:
    """Create the config with defaults if missing; never overwrite. Returns the path when created."""
    path = config_path(project)
    if path.exists():
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render())
    except OSError:
        return None  # a read-only project still runs with defaults
    return path


def write_config(project: Path, *, model: str | None, name: str | None, host: str | None, port: int | None,
                 force: bool) -> tuple[Path, str | None]:
    path = config_path(project)
    if path.exists() and not force:
        raise click.ClickException(
            f"{path} already exists; nothing was changed (its token, if any, is kept). Use --force to replace it.")
    host = host or "127.0.0.1"
    token = None if _is_loopback(host) else secrets.token_hex(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render(host=host, port=port or 9100, model=model, name=name, token=token))
    if token:
        tmp.chmod(0o600)
    tmp.replace(path)
    return path, token
