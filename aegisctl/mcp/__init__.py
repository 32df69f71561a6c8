"""`ag mcp`: an MCP server on stdio so that an agent can drive other agents (`claude mcp add aegis -- ag mcp`).

A thin client of the daemon: every tool is an operation of the registry (aegisd/ops) called over the control
socket (or HTTP with AEGIS_URL + AEGIS_AUTH_TOKEN), so the daemon's roles, ownership, agent scope and audit apply.
``_tools`` is the table of tools and how they call the daemon; ``_server`` serves them with the official MCP
Python SDK (the optional extra `mcp`), which only it imports."""

from aegisctl.mcp._tools import TOOLS, Tool

__all__ = ["TOOLS", "Tool"]
