"""What clients talk to: the control socket, the HTTP/SSE/WebSocket API and the dashboard. Thin adapters over the
operations registry (aegisd/ops)."""
