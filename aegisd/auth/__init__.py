"""Access control: API keys, the credentials of open streams, rate limits and the throttling of
authentication failures."""

from __future__ import annotations

from aegisd.auth._credentials import CredentialWatch
from aegisd.auth._keys import (
    ROLE_PERMISSIONS,
    KeyInfo,
    KeyStore,
    effective_permissions,
    has_permission,
    secret_digest,
)
from aegisd.auth._throttle import AuthThrottle
from aegisd.auth.principal import Credential, Principal, agent_principal
from aegisd.core.ratelimit import RateLimiter

__all__ = ["ROLE_PERMISSIONS", "AuthThrottle", "Credential", "CredentialWatch", "KeyInfo", "KeyStore", "Principal",
           "RateLimiter", "agent_principal", "effective_permissions", "has_permission", "secret_digest"]
