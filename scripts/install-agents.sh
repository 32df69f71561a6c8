#!/usr/bin/env bash
# Installs the real ACP agents (idempotent, quiet when done):
#   - claude-agent-acp (npm) into the project-managed npm prefix, where aegisd looks for it (`make run`)
#   - with `--test`: also the official ACP Python SDK and the example agents shipped in its sdist, which only the
#     real-agent tests use (`make test`)
# PYTHON: the interpreter of the environment to fill (default .venv/bin/python).
set -euo pipefail
PYTHON="${PYTHON:-.venv/bin/python}"
CLAUDE_ACP_VERSION="${CLAUDE_ACP_VERSION:-0.101.0}"
ACP_SDK_VERSION="${ACP_SDK_VERSION:-0.12.1}"

prefix_of_python=$("$PYTHON" -c 'import sys; print(sys.prefix)')
PREFIX="${AEGIS_NPM_PREFIX:-$prefix_of_python/lib/aegis-npm}"
EXAMPLES="$prefix_of_python/share/acp-examples"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "install-agents: node and npm are required (Node.js >= 20); install them (e.g. apt-get install nodejs npm)" >&2
  exit 1
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "install-agents: Node.js >= 20 is required, found $(node --version)" >&2
  exit 1
fi

pkg="$PREFIX/node_modules/@agentclientprotocol/claude-agent-acp/package.json"
if [ -f "$pkg" ] && grep -q "\"version\": \"$CLAUDE_ACP_VERSION\"" "$pkg"; then
  :
else
  echo "install-agents: claude-agent-acp@$CLAUDE_ACP_VERSION -> $PREFIX"
  mkdir -p "$PREFIX"
  npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error \
    "@agentclientprotocol/claude-agent-acp@$CLAUDE_ACP_VERSION"
fi

[ "${1:-}" = "--test" ] || exit 0

if ! "$PYTHON" -c "import acp" 2>/dev/null; then
  echo "install-agents: agent-client-protocol==$ACP_SDK_VERSION (Python SDK)"
  "$PYTHON" -m pip install --quiet "agent-client-protocol==$ACP_SDK_VERSION" 2>&1 | grep -v "is ignored" || true
fi
if [ ! -f "$EXAMPLES/echo_agent.py" ]; then
  echo "install-agents: ACP SDK example agents -> $EXAMPLES"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$PYTHON" -m pip download --quiet --no-binary :all: --no-deps "agent-client-protocol==$ACP_SDK_VERSION" -d "$tmp" \
    2>&1 | grep -v "is ignored" || true
  tar -xzf "$tmp"/agent_client_protocol-*.tar.gz -C "$tmp"
  mkdir -p "$EXAMPLES"
  cp "$tmp"/agent_client_protocol-*/examples/*.py "$EXAMPLES/"
fi
