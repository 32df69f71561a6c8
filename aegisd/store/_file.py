"""The embedded default store: plain files under the state directory.

    <state>/store.json                 {schemaVersion}
    <state>/store.lock                 flock: one daemon per state directory
    <state>/sessions/<id>.json         one record, replaced atomically (tmp + fsync + rename + dir fsync)
    <state>/transcripts/<id>.jsonl     append-only, one entry per line
    <state>/events/<id>.jsonl          append-only, compacted to the last RING entries
    <state>/docs/<collection>/<key>.json   one document ({key, doc}), replaced atomically
    <state>/logs/<name>.jsonl          an append-only log ({seq, data} per line), fsynced per append
    <state>/logs/<name>.next           the next sequence number, kept when a trim empties the log

Documents and log records are durable when the call returns; their fsyncs run in worker threads.
Appends are single `write(2)` calls on O_APPEND descriptors, and a session record is written to a tmp file and
renamed over the old one: once the call returns, the data is in the kernel and survives `kill -9` of the
daemon (so events can be published at once). `flush()` fsyncs everything written since (files and the
directories of renamed records), which makes it survive a machine crash too; whoever acknowledges a write
calls it first. Concurrent flushes share their fsyncs (group commit): one pass runs at a time, in a worker
thread, and a caller arriving during it waits for the next pass, which covers everything written meanwhile.
A line torn by a crash mid-write is cut off on load."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec
import structlog
import trio

from aegisd.core.errors import StoreUnavailable, Unavailable
from aegisd.core.locks import held
from aegisd.core.models import SCHEMA_VERSION, Event, SessionRecord, TranscriptEntry
from aegisd.store._fs import atomic_write as _atomic_write
from aegisd.store._fs import fsync_dir, write_tmp
from aegisd.store._health import StoreHealth
from aegisd.store._names import check_name

log = structlog.get_logger("aegisd.store")

EVENT_RING = 1000
_enc = msgspec.json.Encoder()
_session_dec = msgspec.json.Decoder(SessionRecord)
_entry_dec = msgspec.json.Decoder(TranscriptEntry)
_event_dec = msgspec.json.Decoder(Event)


class _Log:
    """One append-only JSONL file with an index of line starts (built lazily, repaired if torn)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offsets: list[int] | None = None
        self.size = 0

    def load(self) -> None:
        if self.offsets is not None:
            return
        offsets: list[int] = []
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        end = data.rfind(b"\n") + 1
        if end != len(data):  # a torn last line (crash mid-write): cut it off
            log.warning("store.torn_line_truncated", file=str(self.path), bytes=len(data) - end)
            with open(self.path, "r+b") as f:
                f.truncate(end)
            data = data[:end]
        pos = 0
        while pos < end:
            offsets.append(pos)
            pos = data.index(b"\n", pos) + 1
        self.offsets, self.size = offsets, end

    def append(self, lines: list[bytes]) -> None:
        self.load()
        assert self.offsets is not None
        blob = b"".join(lines)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, blob)
        finally:
            os.close(fd)
        pos = self.size
        for line in lines:
            self.offsets.append(pos)
            pos += len(line)
        self.size = pos

    def read(self, start: int, count: int | None) -> list[bytes]:
        self.load()
        assert self.offsets is not None
        n = len(self.offsets)
        if start >= n:
            return []
        stop = n if count is None else min(n, start + count)
        begin = self.offsets[start]
        end = self.offsets[stop] if stop < n else self.size
        with open(self.path, "rb") as f:
            f.seek(begin)
            blob = f.read(end - begin)
        return blob.splitlines()

    def __len__(self) -> int:
        self.load()
        assert self.offsets is not None
        return len(self.offsets)


class _Doc(msgspec.Struct):
    key: str
    doc: msgspec.Raw


class _Record(msgspec.Struct):
    seq: int
    data: msgspec.Raw


_doc_dec = msgspec.json.Decoder(_Doc)
_record_dec = msgspec.json.Decoder(_Record)


def _doc_file(key: str) -> str:
    """A document's file name: the key, %-quoted (readable), or its hash when that would be too long."""
    name = quote(key, safe="")
    return f"k-{name}.json" if len(name) <= 180 else f"h-{hashlib.sha256(key.encode()).hexdigest()}.json"


def _fsync_path(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _RecordFile:
    """One append-only log of the keyed store: a _Log whose lines carry dense sequence numbers, so the record
    with seq N is line N - base. The lock orders appends, trims and reads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.next_path = path.with_suffix(".next")
        self.lines = _Log(path)
        self.lock = trio.Lock()
        self.base = 1  # seq of the first line
        self.next = 1  # seq of the next append
        self.loaded = False

    def load(self) -> None:  # in a worker thread
        if not self.path.exists():  # created (and its directory entry made durable) before the first append
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            fsync_dir(self.path.parent)
        self.lines = _Log(self.path)
        n = len(self.lines)
        try:
            floor = int(self.next_path.read_text() or "1")
        except (FileNotFoundError, ValueError):
            floor = 1
        if n:
            first = _record_dec.decode(self.lines.read(0, 1)[0]).seq
            last = _record_dec.decode(self.lines.read(n - 1, 1)[0]).seq
            self.base, self.next = first, max(last + 1, floor)
        else:
            self.base = self.next = floor
        self.loaded = True

    def read(self, after: int, limit: int | None) -> list[tuple[int, Any]]:  # in a worker thread
        start = max(0, after + 1 - self.base)
        out = []
        for line in self.lines.read(start, limit):
            r = _record_dec.decode(line)
            out.append((r.seq, msgspec.json.decode(r.data)))
        return out

    def trim(self, before: int) -> None:  # in a worker thread
        n = len(self.lines)
        drop = min(n, max(0, before - self.base))
        if not drop:
            return
        _atomic_write(self.next_path, str(self.next).encode())
        keep = self.lines.read(drop, None)
        _atomic_write(self.path, b"".join(line + b"\n" for line in keep))
        self.lines = _Log(self.path)
        self.base += drop
        self.lines.load()


class FileStore:
    on_fenced: Callable[[str | None, str], None] | None = None
    assigns_event_ids = False
    name = "file"

    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir)
        self._lock_fd: int | None = None
        self._transcripts: dict[str, _Log] = {}
        self._events: dict[str, _Log] = {}
        self._dirty: set[Path] = set()  # written, not yet fsynced (files, and directories of renames)
        self._written = 0  # writes so far that flush() must make durable
        self._synced = 0  # of those, how many a finished fsync pass covered
        self._syncing: trio.Event | None = None  # set when the running fsync pass ends
        self._last_event_id = 0
        self._limiter = trio.CapacityLimiter(8)
        self._doc_locks: dict[str, trio.Lock] = {}
        self._events_lock = trio.Lock()
        self._records: dict[str, _RecordFile] = {}
        self.health = StoreHealth("file")

    @contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Around a write: an OSError (the directory removed, the disk full, read-only) marks the store degraded
        and is StoreUnavailable to the caller; a write that works marks it ok again."""
        try:
            yield
        except OSError as exc:
            self.health.down(f"{what} under {self.root}: {exc.strerror or exc}")
            self.health.sync()
            raise StoreUnavailable(f"the file store cannot write {what} under {self.root}: {exc.strerror or exc}"
                                   ) from None
        self.health.up()
        self.health.sync()

    async def monitor(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """While degraded, try every second whether the store can write again (its directories back, room on
        the disk): a small file written and fsynced beside the records, as a record would be."""
        task_status.started()
        while True:
            await trio.sleep(1.0)
            if self.health.ok:
                continue

            def probe() -> None:
                for sub in ("sessions", "transcripts", "events", "docs", "logs"):
                    if not (self.root / sub).is_dir():
                        raise FileNotFoundError(2, "No such file or directory", str(self.root / sub))
                _atomic_write(self.root / "store.probe", b"ok\n")
            try:
                with self._writing("a probe"):
                    await trio.to_thread.run_sync(probe, limiter=self._limiter)
            except StoreUnavailable:
                pass

    # ---- lifecycle -----------------------------------------------------------------------------
    async def open(self) -> None:
        await trio.to_thread.run_sync(self._open_sync)

    def _open_sync(self) -> None:
        for sub in ("", "sessions", "transcripts", "events", "docs", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.root / "store.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Unavailable(f"another aegisd owns the state directory {self.root}") from None
        self._lock_fd = fd
        meta = self.root / "store.json"
        if meta.exists():
            version = json.loads(meta.read_text() or "{}").get("schemaVersion", 1)
            if version > SCHEMA_VERSION:
                self._release()
                raise Unavailable(f"{self.root} holds schema version {version}; this aegisd reads up to "
                                  f"{SCHEMA_VERSION} (upgrade aegisd)")
        else:
            _atomic_write(meta, _enc.encode({"schemaVersion": SCHEMA_VERSION}))
        for tmp in [*(self.root / "sessions").glob("*.tmp"), *(self.root / "docs").glob("*/*.tmp"),
                    *(self.root / "logs").glob("*.tmp")]:
            log.warning("store.stray_tmp_removed", file=str(tmp))
            tmp.unlink(missing_ok=True)
        self._last_event_id = 0
        for path in (self.root / "events").glob("*.jsonl"):
            lg = self._event_log(path.stem)
            if len(lg):
                last = _event_dec.decode(lg.read(len(lg) - 1, 1)[0])
                self._last_event_id = max(self._last_event_id, last.id)

    def _release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    async def close(self) -> None:
        await self.flush()
        self._release()

    def _mark(self, *paths: Path) -> None:
        self._dirty.update(paths)
        self._written += 1

    async def flush(self) -> None:
        """Every write made before this call durable: one fsync pass at a time (off the trio thread), shared
        by every caller whose writes it covers (group commit)."""
        target = self._written
        while self._synced < target:
            if self._syncing is not None:
                await self._syncing.wait()  # a pass that may have started before our writes: then the next
                continue
            paths, self._dirty = self._dirty, set()
            upto = self._written
            done = self._syncing = trio.Event()
            try:
                with self._writing("appends (fsync)"):
                    await trio.to_thread.run_sync(self._fsync_all, paths, limiter=self._limiter)
                self._synced = max(self._synced, upto)
            except BaseException:
                self._dirty |= paths  # not durable: the next pass tries them again
                raise
            finally:
                self._syncing = None
                done.set()

    @staticmethod
    def _fsync_all(paths: set[Path]) -> None:
        for p in paths:
            try:
                fd = os.open(p, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # ---- sessions ------------------------------------------------------------------------------
    def _session_path(self, session_id: str) -> Path:
        if "/" in session_id or session_id in ("", ".", ".."):
            raise ValueError(f"bad session id {session_id!r}")
        return self.root / "sessions" / f"{session_id}.json"

    async def load_sessions(self) -> list[SessionRecord]:
        return await trio.to_thread.run_sync(self._load_sessions_sync)

    def _load_sessions_sync(self) -> list[SessionRecord]:
        out = []
        for path in (self.root / "sessions").glob("*.json"):
            try:
                rec = _session_dec.decode(path.read_bytes())
            except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("store.unreadable_session_skipped", file=str(path), error=str(exc))
                continue
            if rec.schemaVersion > SCHEMA_VERSION:
                log.warning("store.newer_schema_skipped", file=str(path), version=rec.schemaVersion)
                continue
            out.append(rec)
        out.sort(key=lambda r: (r.createdAt, r.id))
        return out

    async def save_session(self, record: SessionRecord) -> None:
        """The record replaced in the kernel (tmp file + rename) when this returns; durable after flush()."""
        data = _enc.encode(record)  # encoded now: later changes to the record are a later save
        path = self._session_path(record.id)
        tmp = path.with_name(path.name + ".tmp")
        with self._writing(f"session {record.id}"):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        self._mark(path, path.parent)

    async def delete_session(self, session_id: str) -> None:
        self._session_path(session_id).unlink(missing_ok=True)
        for kind, cache in (("transcripts", self._transcripts), ("events", self._events)):
            (self.root / kind / f"{session_id}.jsonl").unlink(missing_ok=True)
            cache.pop(session_id, None)

    # ---- transcripts ---------------------------------------------------------------------------
    def _transcript(self, session_id: str) -> _Log:
        lg = self._transcripts.get(session_id)
        if lg is None:
            self._session_path(session_id)  # validates the id
            lg = self._transcripts[session_id] = _Log(self.root / "transcripts" / f"{session_id}.jsonl")
        return lg

    async def append_transcript(self, session_id: str, entries: list[TranscriptEntry]) -> None:
        if not entries:
            return
        lg = self._transcript(session_id)
        with self._writing(f"the transcript of {session_id}"):
            lg.append([_enc.encode(e) + b"\n" for e in entries])
        self._mark(lg.path)

    async def read_transcript(self, session_id: str, start: int = 0,
                              limit: int | None = None) -> list[TranscriptEntry]:
        return [_entry_dec.decode(line) for line in self._transcript(session_id).read(start, limit)]

    async def transcript_count(self, session_id: str) -> int:
        return len(self._transcript(session_id))

    # ---- events --------------------------------------------------------------------------------
    def _event_log(self, session_id: str) -> _Log:
        lg = self._events.get(session_id)
        if lg is None:
            lg = self._events[session_id] = _Log(self.root / "events" / f"{session_id}.jsonl")
        return lg

    async def append_events(self, events: list[Event]) -> None:
        by_session: dict[str, list[bytes]] = {}
        for ev in events:
            by_session.setdefault(ev.sessionId, []).append(_enc.encode(ev) + b"\n")
            self._last_event_id = max(self._last_event_id, ev.id)
        async with held(self._events_lock):  # a compaction below must not lose an append made meanwhile
            with self._writing("events"):
                await self._append_events_locked(by_session)

    async def _append_events_locked(self, by_session: dict[str, list[bytes]]) -> None:
        for sid, lines in by_session.items():
            lg = self._event_log(sid)
            lg.append(lines)
            self._mark(lg.path)
            if len(lg) > 2 * EVENT_RING:  # keep the last EVENT_RING: written and fsynced in a worker thread,
                keep = lg.read(len(lg) - EVENT_RING, None)  # then swapped in here, at once for every reader
                tmp = await trio.to_thread.run_sync(write_tmp, lg.path, b"".join(line + b"\n" for line in keep),
                                                    limiter=self._limiter)
                os.replace(tmp, lg.path)
                self._events.pop(sid, None)
                await trio.to_thread.run_sync(fsync_dir, lg.path.parent, limiter=self._limiter)

    async def read_events(self, *, session_id: str | None, after_id: int, limit: int = 1000) -> list[Event]:
        if session_id is not None:
            logs = [self._event_log(session_id)]
        else:
            logs = [self._event_log(p.stem) for p in (self.root / "events").glob("*.jsonl")]
        out: list[Event] = []
        for lg in logs:
            out.extend(e for e in (_event_dec.decode(line) for line in lg.read(0, None)) if e.id > after_id)
        out.sort(key=lambda e: e.id)
        return out[:limit]

    async def last_event_id(self) -> int:
        return self._last_event_id

    # ---- documents -----------------------------------------------------------------------------
    def _collection_dir(self, collection: str) -> Path:
        return self.root / "docs" / check_name(collection)

    async def doc_get(self, collection: str, key: str) -> Any | None:
        path = self._collection_dir(collection) / _doc_file(key)

        def read() -> Any | None:
            try:
                return msgspec.json.decode(_doc_dec.decode(path.read_bytes()).doc)
            except FileNotFoundError:
                return None
        return await trio.to_thread.run_sync(read, limiter=self._limiter)

    async def doc_put(self, collection: str, key: str, doc: Any) -> None:
        d = self._collection_dir(collection)
        data = _enc.encode({"key": key, "doc": doc})  # encoded now: later changes to doc are a later put

        def write() -> None:
            if not d.is_dir():  # docs/ itself is made at open: a state directory removed since is not recreated
                d.mkdir(exist_ok=True, mode=0o700)
                fsync_dir(d.parent)
            _atomic_write(d / _doc_file(key), data)
        async with self._doc_locks.setdefault(collection, trio.Lock()):  # one tmp file per key: in order
            with self._writing(f"document {collection}/{key}"):
                await trio.to_thread.run_sync(write, limiter=self._limiter)

    async def doc_delete(self, collection: str, key: str) -> None:
        path = self._collection_dir(collection) / _doc_file(key)

        def unlink() -> None:
            try:
                path.unlink()
            except FileNotFoundError:
                return
            fsync_dir(path.parent)
        async with self._doc_locks.setdefault(collection, trio.Lock()):
            with self._writing(f"document {collection}/{key}"):
                await trio.to_thread.run_sync(unlink, limiter=self._limiter)

    async def doc_list(self, collection: str) -> dict[str, Any]:
        d = self._collection_dir(collection)

        def scan() -> dict[str, Any]:
            out: dict[str, Any] = {}
            for path in sorted(d.glob("*.json")):
                try:
                    item = _doc_dec.decode(path.read_bytes())
                    out[item.key] = msgspec.json.decode(item.doc)
                except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                    log.warning("store.unreadable_document_skipped", file=str(path), error=str(exc))
            return out
        return await trio.to_thread.run_sync(scan, limiter=self._limiter)

    # ---- append-only logs ----------------------------------------------------------------------
    async def _record_file(self, name: str) -> _RecordFile:
        rf = self._records.get(name)
        if rf is None:
            rf = self._records[name] = _RecordFile(self.root / "logs" / f"{check_name(name)}.jsonl")
        if not rf.loaded:
            async with rf.lock:
                if not rf.loaded:
                    await trio.to_thread.run_sync(rf.load, limiter=self._limiter)
        return rf

    async def log_append(self, log: str, record: Any) -> int:
        with self._writing(f"log {log}"):
            rf = await self._record_file(log)
            async with rf.lock:
                seq = rf.next
                rf.lines.append([_enc.encode({"seq": seq, "data": record}) + b"\n"])  # one write(2), in order
                rf.next = seq + 1
            # durable before it is acknowledged; concurrent appends share their fsyncs (group commit)
            await trio.to_thread.run_sync(_fsync_path, rf.path, limiter=self._limiter)
        return seq

    async def log_read(self, log: str, after: int = 0, limit: int | None = None) -> list[tuple[int, Any]]:
        rf = await self._record_file(log)
        async with rf.lock:
            return await trio.to_thread.run_sync(rf.read, after, limit, limiter=self._limiter)

    async def log_trim(self, log: str, before: int) -> None:
        rf = await self._record_file(log)
        async with rf.lock:
            await trio.to_thread.run_sync(rf.trim, before, limiter=self._limiter)


def read_log(state_dir: Path, name: str) -> list[tuple[int, Any]] | None:
    """A file store's log read without its lock, for tools such as `ag doctor` (the daemon may be running): the
    records whole lines hold, or None when the log does not exist."""
    path = Path(state_dir) / "logs" / f"{name}.jsonl"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    out = []
    for line in data[:data.rfind(b"\n") + 1].splitlines():
        try:
            r = _record_dec.decode(line)
            out.append((r.seq, msgspec.json.decode(r.data)))
        except (msgspec.DecodeError, msgspec.ValidationError):
            out.append((0, {"_corrupt": line.decode(errors="replace")}))
    return out
