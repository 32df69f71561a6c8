"""The Agent Client Protocol, client side: wire types, the JSON-RPC connection, agent processes."""

from __future__ import annotations

from aegisd.acp._connection import AcpConnection, ClientHandler, RemoteError
from aegisd.acp._process import AgentProcess, Lifeline, agent_environment, spawn_agent
from aegisd.core import wire as wire

__all__ = ["AcpConnection", "AgentProcess", "ClientHandler", "Lifeline", "RemoteError", "agent_environment",
           "spawn_agent", "wire"]
