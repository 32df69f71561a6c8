"""What other nodes change in a shared store reaches the caches of this one.

Several aegisd nodes on one PostgreSQL share keys, templates, memory, pipelines, SSO sessions, usage, the audit
trail and the webhooks' dead letters through the store (aegisd/store), and the features keep what they read from
it in memory. The PostgreSQL store tells a node when another one changed something: it calls ``doc_changed(
collection, key)`` (key None: anything in the collection, e.g. after a reconnect), ``log_appended(log)``, and
``resync()`` (the notifications were lost for a while: anything may have changed), on the trio thread. Those
calls only note the work; :meth:`ChangeRouter.run`, a task of the daemon, does it:

- coalesced: notes pile up while a reload runs, and a burst is done at once — one key noted a hundred times is
  read once, and more than ``MAX_KEYS`` keys of one collection are read as one list of the collection;
- in the background: the store's caller never waits for a reload, however slow the store;
- until it worked: a reload the store refused (StoreUnavailable, or any other error) is noted again and retried
  after ``retry_s`` (doubling up to ``MAX_RETRY_S``); the router itself never ends.

Notifications of this node's own writes may come too: every reload is idempotent and cheap when nothing changed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
import trio

from aegisd.core.errors import StoreUnavailable

if TYPE_CHECKING:
    from aegisd.ops import Services

log = structlog.get_logger("aegisd.changes")

DocReload = Callable[[str | None], Awaitable[Any]]  # one document by key, or the whole collection (None)
LogCatchUp = Callable[[], Awaitable[Any]]  # what was appended since the last time

MAX_KEYS = 16  # more keys of one collection noted at once: one list of the collection instead
COALESCE_S = 0.01  # after the first note, wait this long for the rest of a burst
RETRY_S = 1.0
MAX_RETRY_S = 30.0


class ChangeRouter:
    def __init__(self, *, docs: dict[str, DocReload], logs: dict[str, LogCatchUp], retry_s: float = RETRY_S,
                 coalesce_s: float = COALESCE_S) -> None:
        self.docs, self.logs = docs, logs
        self.retry_s, self.coalesce_s = retry_s, coalesce_s
        self._keys: dict[str, set[str] | None] = {}  # collection -> keys to read again (None: all of it)
        self._logs: set[str] = set()
        self._wake = trio.Event()
        self.reloads = 0  # reloads done (documents, collections and logs): for tests and diagnostics
        self.failures = 0  # reloads that failed (and were noted again)
        self.idle = trio.Event()  # set while nothing is noted and no reload runs
        self.idle.set()

    @classmethod
    def of(cls, services: Services, **kwargs: Any) -> ChangeRouter:
        """The router for a daemon's features (the store's collection and log names, as aegisd/app/daemon.py
        hands them out)."""
        docs: dict[str, DocReload] = {"keys": services.keys.reload, "templates": services.templates.reload,
                                      "memory": services.memory.reload, "pipelines": services.pipelines.reload}
        if services.oidc is not None:
            docs["sso-sessions"] = services.oidc.reload
        logs: dict[str, LogCatchUp] = {"usage": services.usage.catch_up, "audit": services.audit.catch_up,
                                       "webhooks-dlq": services.webhooks.reload_dlq}
        return cls(docs=docs, logs=logs, **kwargs)

    def attach(self, store: object) -> list[str]:
        """Have ``store`` call this router, where it can (the PostgreSQL store has ``on_doc_changed``,
        ``on_log_appended`` and ``on_resync``; the others notify nothing). Returns the hooks set."""
        hooks = {"on_doc_changed": self.doc_changed, "on_log_appended": self.log_appended, "on_resync": self.resync}
        found = [name for name in hooks if hasattr(store, name)]
        for name in found:
            setattr(store, name, hooks[name])
        return found

    # ---- notes (sync, on the trio thread: never wait) ------------------------------------------------------
    def doc_changed(self, collection: str, key: str | None) -> None:
        if collection not in self.docs:
            return
        if key is None:
            self._keys[collection] = None
        else:
            keys = self._keys.setdefault(collection, set())
            if keys is not None:
                keys.add(key)
                if len(keys) > MAX_KEYS:
                    self._keys[collection] = None
        self._poke()

    def log_appended(self, log_name: str) -> None:
        if log_name in self.logs:
            self._logs.add(log_name)
            self._poke()

    def resync(self) -> None:
        """Anything may have changed (the notifications were lost for a while): read everything again."""
        for collection in self.docs:
            self._keys[collection] = None
        self._logs.update(self.logs)
        self._poke()

    def _poke(self) -> None:
        self.idle = trio.Event() if self.idle.is_set() else self.idle
        self._wake.set()

    # ---- the work ------------------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        delay = self.retry_s
        while True:
            if not (self._keys or self._logs):
                self.idle.set()
                await self._wake.wait()
            self._wake = trio.Event()
            await trio.sleep(self.coalesce_s)  # the rest of a burst
            if await self._drain():
                delay = self.retry_s
                continue
            await trio.sleep(delay)  # the store is away: what failed is noted again
            delay = min(delay * 2, MAX_RETRY_S)

    async def _drain(self) -> bool:
        """Do every noted reload once; False if one failed (it is noted again)."""
        keys, self._keys = self._keys, {}
        logs, self._logs = self._logs, set()
        ok = True
        for collection, which in keys.items():
            for key in [None] if which is None else sorted(which):
                if not await self._do(f"{collection}/{key or '*'}", self.docs[collection], key):
                    ok = False
                    self.doc_changed(collection, key)
        for name in sorted(logs):
            if not await self._do(name, self.logs[name]):
                ok = False
                self.log_appended(name)
        return ok

    async def _do(self, what: str, reload: Callable[..., Awaitable[Any]], *args: Any) -> bool:
        try:
            await reload(*args)
        except StoreUnavailable as exc:
            self.failures += 1
            log.warning("changes.reload_failed", what=what, error=exc.message)
            return False
        except Exception:  # a bug in one feature's reload must not end the others' (nor the daemon)
            self.failures += 1
            log.exception("changes.reload_failed", what=what)
            return False
        self.reloads += 1
        return True
