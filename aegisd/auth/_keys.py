"""API keys, stored hashed: one document per key in the store's `keys` collection (aegisd/store), read from
memory. A change made through this daemon is in the store before it is acknowledged; one made by another writer
of the same store (another daemon on a shared PostgreSQL or Redis, a tool) is picked up by ``reload()`` when the
store reports the change (a cluster's PostgreSQL: aegisd/app/_changes.py) and by ``refresh()``, which the daemon
runs every second (and the credential watcher more often while key-authenticated streams are open). An
earlier version's (or a hand-written) `<state>/keys.json` is moved into the store at start."""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog
import trio

from aegisd.core.errors import NotFound, ValidationError
from aegisd.store import Collection, migrate_legacy

log = structlog.get_logger("aegisd.auth")

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({"create", "send", "approve", "reject", "kill", "audit"}),
    "operator": frozenset({"create", "send", "approve", "reject", "kill", "audit"}),
    "viewer": frozenset({"audit"}),
}
LAST_USED_FLUSH_S = 60.0
REFRESH_S = 1.0  # how often the daemon re-reads the keys another writer may have changed


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


def _read_legacy(path: Path) -> list[dict[str, Any]]:
    """keys.json: {"version": 1, "keys": [...]}."""
    try:
        data = json.loads(path.read_text() or "{}")
    except ValueError:
        log.error("keys.unreadable_file", file=str(path))
        raise
    keys = data.get("keys", []) if isinstance(data, dict) else []
    return [k for k in keys if isinstance(k, dict) and isinstance(k.get("id"), str)]


def _without_use(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "lastUsedAt"}


class KeyStore:
    def __init__(self, collection: Collection, *, legacy_file: Path | None = None) -> None:
        self.collection = collection
        self.legacy_file = legacy_file
        self._keys: dict[str, KeyInfo] = {}
        self._seen: dict[str, dict[str, Any]] = {}  # the documents as last read (lastUsedAt aside)
        self._used: set[str] = set()  # keys whose lastUsedAt changed since it was last written
        self._last_flush = 0.0
        self._writes = 0  # bumped by every write of this daemon: a read that overlapped one is not trusted
        # called when keys may have stopped working (revoked, rotated, changed by another writer): see _credentials
        self.on_change: Callable[[], None] | None = None

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # ---- persistence ---------------------------------------------------------------------------
    async def open(self) -> None:
        await self.refresh()

    async def _import(self, keys: list[dict[str, Any]]) -> None:
        for k in keys:
            await self.collection.put(k["id"], k)

    async def refresh(self) -> bool:
        """Re-read the keys (moving a keys.json that appeared in the state directory into the store first); True
        if another writer changed them. Keeps the last good set when the store cannot be read."""
        try:
            if self.legacy_file is not None:
                await migrate_legacy(self.legacy_file, _read_legacy, self._import)
            writes = self._writes
            docs = await self.collection.list()
            if writes != self._writes:  # read while this daemon wrote: it may predate the write; next round
                return False
        except Exception as exc:  # noqa: BLE001 - a broken keys.json, the store away for a moment
            log.warning("keys.refresh_failed", error=str(exc))
            return False
        return self._replace_all(docs)

    def _replace_all(self, docs: dict[str, Any]) -> bool:
        """Take ``docs`` (the whole collection, as read) as the keys; True if they changed."""
        seen = {kid: _without_use(doc) for kid, doc in docs.items() if isinstance(doc, dict)}
        if seen == self._seen:
            return False
        keys: dict[str, KeyInfo] = {}
        for kid, doc in docs.items():
            key = self._decode(kid, doc)
            if key is not None:
                keys[kid] = key
        self._keys, self._seen = keys, seen
        self._changed()
        return True

    def _decode(self, kid: str, doc: Any) -> KeyInfo | None:
        try:
            key = KeyInfo(**doc)
        except TypeError:
            log.warning("keys.unreadable_key_skipped", key_id=kid)
            return None
        old = self._keys.get(kid)
        if old is not None and (old.lastUsedAt or 0) > (key.lastUsedAt or 0):
            key.lastUsedAt = old.lastUsedAt  # not written yet
        return key

    async def reload(self, key_id: str | None = None) -> None:
        """Another node changed key ``key_id`` (None: any key) in the store: re-read it (or the whole collection)
        and replace what is cached. A key gone from the store stops authenticating here at once, and ``on_change``
        tells the credential watcher, which ends the streams it opened. Cheap when nothing changed (a notification
        of this daemon's own write); raises the store's error (StoreUnavailable) for the caller to retry."""
        for _ in range(3):  # a read that overlapped a write of this daemon may predate it: read again
            writes = self._writes
            if key_id is None:
                docs = await self.collection.list()
            else:
                doc = await self.collection.get(key_id)
            if writes == self._writes:
                break
        else:
            return  # this daemon keeps writing: what it wrote is cached; the next notification reads again
        if key_id is None:
            self._replace_all(docs)
            return
        if not isinstance(doc, dict):
            had = self._keys.pop(key_id, None) is not None
            self._seen.pop(key_id, None)
            self._used.discard(key_id)
            if had:
                self._changed()  # revoked elsewhere: the streams it opened here end
            return
        seen = _without_use(doc)
        if self._seen.get(key_id) == seen:
            old = self._keys.get(key_id)
            stored_use = doc.get("lastUsedAt")
            if old is not None and isinstance(stored_use, int) and stored_use > (old.lastUsedAt or 0):
                old.lastUsedAt = stored_use  # used through another node
            return
        key = self._decode(key_id, doc)
        if key is None:
            return
        self._keys[key_id], self._seen[key_id] = key, seen
        self._changed()

    async def _put(self, key: KeyInfo) -> None:
        doc = asdict(key)
        self._writes += 1
        await self.collection.put(key.id, doc)
        self._keys[key.id] = key
        self._seen[key.id] = _without_use(doc)
        self._used.discard(key.id)

    async def flush_used(self) -> None:
        """Write the lastUsedAt of the keys used since the last time."""
        used, self._used = self._used, set()
        self._last_flush = time.monotonic()
        for kid in used:
            key = self._keys.get(kid)
            if key is not None:
                try:
                    # only the timestamp, onto the stored document: another node may have revoked or rotated the
                    # key since this daemon read it, and writing the whole cached key back would undo that
                    stored = await self.collection.get(kid)
                    if not isinstance(stored, dict) or (stored.get("lastUsedAt") or 0) >= (key.lastUsedAt or 0):
                        continue
                    await self.collection.put(kid, {**stored, "lastUsedAt": key.lastUsedAt})
                except Exception as exc:  # noqa: BLE001 - only a timestamp: the next round writes it
                    self._used.add(kid)
                    log.warning("keys.last_used_not_saved", error=str(exc))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Pick up other writers' changes every REFRESH_S; write lastUsedAt every LAST_USED_FLUSH_S."""
        task_status.started()
        while True:
            await trio.sleep(REFRESH_S)
            await self.refresh()
            if self._used and time.monotonic() - self._last_flush > LAST_USED_FLUSH_S:
                await self.flush_used()

    # ---- operations ----------------------------------------------------------------------------
    def has_keys(self) -> bool:
        return bool(self._keys)

    def has_usable_keys(self, now_ms: int | None = None) -> bool:
        """Whether a key that has not expired exists (one that can still authenticate someone)."""
        now = _now_ms() if now_ms is None else now_ms
        return any(k.expiresAt is None or now < k.expiresAt for k in self._keys.values())

    def list(self) -> list[KeyInfo]:
        return sorted(self._keys.values(), key=lambda k: (k.createdAt, k.id))

    def get(self, key_id: str) -> KeyInfo:
        try:
            return self._keys[key_id]
        except KeyError:
            raise NotFound(f"API key {key_id} not found") from None

    async def create(self, name: str, *, role: str = "viewer", permissions: builtins.list[str] | None = None,
               ttl_days: int | None = None, rate_limit: int | None = None,
               ttl_ms: int | None = None) -> tuple[KeyInfo, str]:
        """A new key. ``ttl_ms`` (internal, not offered by the API) lets tests make one that expires soon."""
        if not name or len(name) > 100:
            raise ValidationError("key name must be 1-100 characters")
        if role not in ROLE_PERMISSIONS:
            raise ValidationError(f"role must be one of {', '.join(ROLE_PERMISSIONS)}")
        if ttl_days is not None and ttl_days <= 0:
            raise ValidationError("ttlDays must be positive")
        secret = "aegis_" + secrets.token_hex(32)
        now = _now_ms()
        key = KeyInfo(id=secrets.token_hex(8), name=name, role=role, hash=secret_digest(secret),
                      permissions=list(permissions) if permissions is not None else None, createdAt=now,
                      expiresAt=now + ttl_days * 86_400_000 if ttl_days else (now + ttl_ms if ttl_ms else None),
                      rateLimit=rate_limit or 100)
        await self._put(key)
        return key, secret

    async def revoke(self, key_id: str) -> bool:
        if key_id not in self._keys:
            return False
        self._writes += 1
        await self.collection.delete(key_id)  # gone from the store before the revocation is acknowledged
        self._keys.pop(key_id, None)
        self._seen.pop(key_id, None)
        self._changed()
        return True

    async def rotate(self, key_id: str, *, grace_seconds: int = 3600,
                     ttl_days: int | None = None) -> tuple[KeyInfo, str]:
        key = dataclasses.replace(self.get(key_id))
        secret = "aegis_" + secrets.token_hex(32)
        now = _now_ms()
        if grace_seconds > 0:
            key.graceHash, key.graceExpiresAt = key.hash, now + grace_seconds * 1000
        else:
            key.graceHash = key.graceExpiresAt = None
        key.hash = secret_digest(secret)
        if ttl_days:
            key.expiresAt = now + ttl_days * 86_400_000
        await self._put(key)
        self._changed()
        return key, secret

    async def set_quotas(self, key_id: str, quotas: dict[str, object] | None) -> KeyInfo:
        key = dataclasses.replace(self.get(key_id), quotas=quotas)
        await self._put(key)
        return key

    def authenticate(self, secret: str, now_ms: int | None = None) -> KeyInfo | None:
        """The key this secret belongs to (current, or the previous one within its rotation grace)."""
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
        self._used.add(found.id)  # written by run() within LAST_USED_FLUSH_S, and at shutdown
        return found
