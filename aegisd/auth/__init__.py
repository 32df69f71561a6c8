"""Access control: API keys and rate limits."""

from __future__ import annotations

from ._keys import ROLE_PERMISSIONS, KeyInfo, KeyStore, effective_permissions, has_permission
from ._ratelimit import RateLimiter

__all__ = ["ROLE_PERMISSIONS", "KeyInfo", "KeyStore", "RateLimiter", "effective_permissions", "has_permission"]
