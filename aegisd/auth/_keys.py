"""API keys, stored hashed in `<state>/keys.json` (0600, atomic writes), reloaded when the file changes."""

from __future__ import annotations

import builtins
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aegisd.core.errors import NotFound, ValidationError
from aegisd.store._fs import atomic_write

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({"create", "send", "approve", "reject", "kill", "audit"}),
    "operator": frozenset({"create", "send", "approve", "reject", "kill", "audit"}),
    "viewer": frozenset({"audit"}),
}
LAST_USED_FLUSH_S = 60.0


def _now_ms() -> int:
    return int(time.time() * 1000)


def secret_digest(secret: str) -> str:
    """How a secret is stored (and how a stream remembers which secret opened it)."""
    return hashlib.sha256(secret.encode()).hexdigest()



@dataclass
class KeyInfo:
    id: str
    name: str
    role: str
    hash: str
    permissions: list[str] | None = None
    createdAt: int = 0
    expiresAt: int | None = None
    lastUsedAt: int | None = None
    rateLimit: int = 100
    graceHash: str | None = None
    graceExpiresAt: int | None = None
    quotas: dict[str, object] | None = None  # aegisd.quotas.Quotas, as stored
    extra: dict[str, object] = field(default_factory=dict)

    def to_public(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if k not in ("hash", "graceHash", "extra")}


def effective_permissions(key: KeyInfo) -> frozenset[str]:
    return frozenset(key.permissions) if key.permissions is not None else ROLE_PERMISSIONS.get(key.role, frozenset())


def has_permission(key: KeyInfo, perm: str) -> bool:
    return key.role == "admin" or perm in effective_permissions(key)


class KeyStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._keys: dict[str, KeyInfo] = {}
        self._stamp: tuple[float, int] | None = None
        self._dirty_used = False
        self._last_flush = 0.0
        # called when keys may have stopped working (revoked, rotated, keys.json changed): see _credentials
        self.on_change: Callable[[], None] | None = None

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # ---- persistence ---------------------------------------------------------------------------
    def reload_if_changed(self) -> bool:
        """Re-read keys.json if another process changed it (one stat() when it did not); True if it did."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            if self._stamp is not None:
                self._keys, self._stamp = {}, None
                self._changed()
                return True
            return False
        stamp = (st.st_mtime, st.st_size)
        if stamp == self._stamp:
            return False
        try:
            data = json.loads(self.path.read_text() or "{}")
            keys = {k["id"]: KeyInfo(**k) for k in data.get("keys", [])}
        except (OSError, ValueError, TypeError, KeyError):
            return False  # keep the last good set on a broken edit
        self._keys, self._stamp = keys, stamp
        self._changed()
        return True

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = json.dumps({"version": 1, "keys": [asdict(k) for k in self._keys.values()]}, indent=1).encode()
        atomic_write(self.path, data)
        st = self.path.stat()
        self._stamp = (st.st_mtime, st.st_size)
        self._dirty_used = False

    # ---- operations ----------------------------------------------------------------------------
    def has_keys(self) -> bool:
        self.reload_if_changed()
        return bool(self._keys)

    def has_usable_keys(self, now_ms: int | None = None) -> bool:
        """Whether a key that has not expired exists (one that can still authenticate someone)."""
        self.reload_if_changed()
        now = _now_ms() if now_ms is None else now_ms
        return any(k.expiresAt is None or now < k.expiresAt for k in self._keys.values())

    def list(self) -> list[KeyInfo]:
        self.reload_if_changed()
        return sorted(self._keys.values(), key=lambda k: (k.createdAt, k.id))

    def get(self, key_id: str) -> KeyInfo:
        self.reload_if_changed()
        try:
            return self._keys[key_id]
        except KeyError:
            raise NotFound(f"API key {key_id} not found") from None

    def create(self, name: str, *, role: str = "viewer", permissions: builtins.list[str] | None = None,
               ttl_days: int | None = None, rate_limit: int | None = None,
               ttl_ms: int | None = None) -> tuple[KeyInfo, str]:
        """A new key. ``ttl_ms`` (internal, not offered by the API) lets tests make one that expires soon."""
        if not name or len(name) > 100:
            raise ValidationError("key name must be 1-100 characters")
        if role not in ROLE_PERMISSIONS:
            raise ValidationError(f"role must be one of {', '.join(ROLE_PERMISSIONS)}")
        if ttl_days is not None and ttl_days <= 0:
            raise ValidationError("ttlDays must be positive")
        self.reload_if_changed()
        secret = "aegis_" + secrets.token_hex(32)
        now = _now_ms()
        key = KeyInfo(id=secrets.token_hex(8), name=name, role=role, hash=secret_digest(secret),
                      permissions=list(permissions) if permissions is not None else None, createdAt=now,
                      expiresAt=now + ttl_days * 86_400_000 if ttl_days else (now + ttl_ms if ttl_ms else None),
                      rateLimit=rate_limit or 100)
        self._keys[key.id] = key
        self._save()
        return key, secret

    def revoke(self, key_id: str) -> bool:
        self.reload_if_changed()
        if self._keys.pop(key_id, None) is None:
            return False
        self._save()
        self._changed()
        return True

    def rotate(self, key_id: str, *, grace_seconds: int = 3600, ttl_days: int | None = None) -> tuple[KeyInfo, str]:
        key = self.get(key_id)
        secret = "aegis_" + secrets.token_hex(32)
        now = _now_ms()
        if grace_seconds > 0:
            key.graceHash, key.graceExpiresAt = key.hash, now + grace_seconds * 1000
        else:
            key.graceHash = key.graceExpiresAt = None
        key.hash = secret_digest(secret)
        if ttl_days:
            key.expiresAt = now + ttl_days * 86_400_000
        self._save()
        self._changed()
        return key, secret

    def set_quotas(self, key_id: str, quotas: dict[str, object] | None) -> KeyInfo:
        key = self.get(key_id)
        key.quotas = quotas
        self._save()
        return key

    def authenticate(self, secret: str, now_ms: int | None = None) -> KeyInfo | None:
        """The key this secret belongs to (current, or the previous one within its rotation grace)."""
        self.reload_if_changed()
        now = _now_ms() if now_ms is None else now_ms
        digest = secret_digest(secret)
        found = None
        for key in self._keys.values():  # compare against every key: no early exit to time
            current = hmac.compare_digest(digest, key.hash)
            graced = key.graceHash is not None and hmac.compare_digest(digest, key.graceHash) \
                and key.graceExpiresAt is not None and now < key.graceExpiresAt
            if (current or graced) and found is None:
                found = key
        if found is None or (found.expiresAt is not None and now >= found.expiresAt):
            return None
        found.lastUsedAt = now
        self._dirty_used = True
        if time.monotonic() - self._last_flush > LAST_USED_FLUSH_S:
            self._last_flush = time.monotonic()
            self._save()
        return found
