"""What every notification channel (webhook endpoint, Telegram chat, email) reports in /v1/channels/health."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aegisd.core.models import now_ms


@dataclass
class ChannelHealth:
    last_success: int | None = None  # ms
    last_error: str | None = None
    last_error_at: int | None = None
    pending: int = 0

    def ok(self, ts: int | None = None) -> None:
        self.last_success = now_ms() if ts is None else ts

    def error(self, error: str, ts: int | None = None) -> None:
        self.last_error, self.last_error_at = error, now_ms() if ts is None else ts

    def report(self, channel: str, endpoint: str) -> dict[str, Any]:
        """Healthy unless the latest attempt failed."""
        healthy = self.last_error_at is None or (self.last_success or 0) > self.last_error_at
        return {"channel": channel, "endpoint": endpoint, "healthy": healthy, "lastSuccess": self.last_success,
                "lastError": self.last_error, "pendingCount": self.pending}
