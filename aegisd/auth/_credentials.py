"""Revocation is immediate: long-lived connections (SSE streams, terminal WebSockets) end within a second of the
credential that opened them ending.

A principal carries the `Credential` it authenticated with. What ends one:
- an API key (by the digest of the secret used): revoked, expired (`expiresAt`), or, for the old secret of a
  rotation, its grace period over (or a second rotation);
- a dashboard single sign-on session (by the digest of its cookie): signed out, or expired;
- an IdP bearer token: its `exp` (with the 60 s leeway it is accepted with).
The master token and local callers carry none and are never cut off.

No stream polls. `CredentialWatch.run` is one task for all of them: it wakes when the key store or the SSO
sessions change through this daemon (`changed()`), at the earliest known deadline (an expiry, a grace end), and
— only while a key-authenticated stream is open — every `POLL_S` to re-read the keys from the store, which another
writer (another daemon on the same store, a keys.json dropped into the state directory) may have changed."""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import structlog
import trio

from aegisd.auth.principal import Principal

if TYPE_CHECKING:
    from aegisd.auth._keys import KeyStore
    from aegisd.auth.oidc import Oidc

log = structlog.get_logger("aegisd.auth")

POLL_S = 0.5  # how often the keys are re-read while a key-authenticated stream is open


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Watch:
    __slots__ = ("on_end", "principal")

    def __init__(self, principal: Principal, on_end: Callable[[str], None]) -> None:
        self.principal = principal
        self.on_end = on_end


class CredentialWatch:
    def __init__(self, keys: KeyStore, oidc: Callable[[], Oidc | None], *, poll_s: float = POLL_S) -> None:
        self._keys = keys
        self._oidc = oidc
        self.poll_s = poll_s
        self._watches: set[_Watch] = set()
        self._wake = trio.Event()

    # ---- what ends a credential ----------------------------------------------------------------------
    def state(self, principal: Principal) -> tuple[str | None, int | None]:
        """(why the principal's credential no longer works, or None; when it stops, epoch ms, or None)."""
        c = principal.credential
        now = _now_ms()
        if c is None:
            return None, None
        if c.kind == "key":
            return self._key_state(principal.key_id or "", c.ref, now)
        if c.kind == "sso":
            o = self._oidc()
            s = o.sessions.get(c.ref) if o is not None else None
            if s is None:
                return "signed out", None
            return ("the sign-in expired", None) if now >= s.expires_at_ms else (None, s.expires_at_ms)
        until = c.expires_at_ms
        if until is not None and now >= until:
            return "the token expired", None
        return None, until

    def _key_state(self, key_id: str, digest: str, now: int) -> tuple[str | None, int | None]:
        try:
            key = self._keys.get(key_id)
        except Exception:  # noqa: BLE001 - NotFound: revoked (or removed from the store by another writer)
            return "the API key was revoked", None
        if hmac.compare_digest(digest, key.hash):
            until, why = key.expiresAt, "the API key expired"
        elif key.graceHash is not None and key.graceExpiresAt is not None \
                and hmac.compare_digest(digest, key.graceHash):
            until, why = key.graceExpiresAt, "the API key was rotated and the old secret's grace period ended"
            if key.expiresAt is not None and key.expiresAt < until:
                until, why = key.expiresAt, "the API key expired"
        else:
            return "the API key was rotated", None
        if until is not None and now >= until:
            return why, None
        return None, until

    def ended(self, principal: Principal) -> str | None:
        return self.state(principal)[0]

    # ---- streams -------------------------------------------------------------------------------------
    def changed(self) -> None:
        """Something that may end credentials changed (a key revoked or rotated, an SSO session ended)."""
        self._wake.set()

    @contextmanager
    def watch(self, principal: Principal, on_end: Callable[[str], None]) -> Iterator[None]:
        """While in this block, ``on_end(why)`` is called (once, from the watcher task) when the principal's
        credential stops working; at once if it already has."""
        if principal.credential is None:
            yield
            return
        w = _Watch(principal, on_end)
        why = self.ended(principal)
        if why is not None:
            on_end(why)
        else:
            self._watches.add(w)
            self._wake.set()  # its deadline may be the earliest
        try:
            yield
        finally:
            self._watches.discard(w)

    @property
    def watching(self) -> int:
        return len(self._watches)

    def _sweep(self) -> int | None:
        """End the watches whose credential stopped working; the earliest deadline of the others."""
        earliest: int | None = None
        for w in list(self._watches):
            why, until = self.state(w.principal)
            if why is not None:
                self._watches.discard(w)
                log.info("auth.stream_closed", principal=w.principal.name, reason=why)
                try:
                    w.on_end(why)
                except Exception:  # a broken stream must not stop the others from closing
                    log.exception("auth.stream_close_failed", principal=w.principal.name)
            elif until is not None:
                earliest = until if earliest is None else min(earliest, until)
        return earliest

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            wake = self._wake = trio.Event()
            await self._keys.refresh()
            earliest = self._sweep()
            while not wake.is_set():
                timeout = math.inf
                if earliest is not None:
                    timeout = max(0.0, (earliest - _now_ms()) / 1000) + 0.001
                polling = any(w.principal.credential is not None and w.principal.credential.kind == "key"
                              for w in self._watches)
                with trio.move_on_after(min(timeout, self.poll_s) if polling else timeout):
                    await wake.wait()
                if earliest is not None and _now_ms() >= earliest:
                    break
                if polling and not wake.is_set() and await self._keys.refresh():
                    break  # another writer changed the keys

