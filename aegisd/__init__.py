"""aegisd: the Aegis daemon that supervises coding-agent sessions over the Agent Client Protocol."""

from __future__ import annotations

__version__ = "0.1.0"
PROTOCOL_VERSION = 1  # version of the control protocol spoken on the Unix socket and /v1/rpc
