"""Access control: API keys, the credentials of open streams, rate limits and the throttling of
authentication failures."""

from __future__ import annotations

from ._credentials import Credential, CredentialWatch
from ._keys import ROLE_PERMISSIONS, KeyInfo, KeyStore, effective_permissions, has_permission, secret_digest
from ._ratelimit import RateLimiter
from ._throttle import AuthThrottle

__all__ = ["ROLE_PERMISSIONS", "AuthThrottle", "Credential", "CredentialWatch", "KeyInfo", "KeyStore", "RateLimiter",
           "effective_permissions", "has_permission", "secret_digest"]
