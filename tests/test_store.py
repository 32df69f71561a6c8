"""The file store's contract: durable records, append-only logs, torn-line repair, one writer, schema."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from aegisd.core.errors import Unavailable
from aegisd.core.models import Event, PendingPermission, PermissionOption, SessionRecord, TranscriptEntry
from aegisd.core.states import State
from aegisd.store._file import EVENT_RING, FileStore


def rec(i: int = 1, **kw: object) -> SessionRecord:
    return SessionRecord(id=f"s{i}", workDir="/w", createdAt=i, **kw)  # type: ignore[arg-type]


def entry(i: int) -> TranscriptEntry:
    return TranscriptEntry(id=i, role="assistant", contentType="text", text=f"t{i} ünïcode\nline", timestamp=i)


async def test_roundtrip_and_replace(tmp_path: Path) -> None:
    st = FileStore(tmp_path)
    await st.open()
    full = rec(1, status=State.PERMISSION_PROMPT, pendingPermission=PendingPermission(
        requestId="r", toolTitle="t", rawInput={"a": [1, 2]}, options=[PermissionOption(optionId="o", kind="k")]))
    await st.save_session(full)
    await st.save_session(rec(2))
    await st.save_session(rec(2, name="renamed"))
    await st.close()
    st2 = FileStore(tmp_path)
    await st2.open()
    got = await st2.load_sessions()
    assert [r.id for r in got] == ["s1", "s2"]
    assert got[0] == full and got[1].name == "renamed"
    await st2.close()


async def test_transcript_pages(tmp_path: Path) -> None:
    st = FileStore(tmp_path)
    await st.open()
    await st.append_transcript("s1", [entry(i) for i in range(1, 6)])
    await st.append_transcript("s1", [entry(6)])
    assert await st.transcript_count("s1") == 6
    assert [e.id for e in await st.read_transcript("s1", 2, 3)] == [3, 4, 5]
    assert [e.id for e in await st.read_transcript("s1", 4)] == [5, 6]
    assert await st.read_transcript("s1", 10) == []
    assert (await st.read_transcript("s1", 0, 1))[0].text == "t1 ünïcode\nline"
    await st.close()
    st2 = FileStore(tmp_path)
    await st2.open()
    assert await st2.transcript_count("s1") == 6
    await st2.close()


async def test_events_ring_and_last_id(tmp_path: Path) -> None:
    st = FileStore(tmp_path)
    await st.open()
    assert await st.last_event_id() == 0
    n = 2 * EVENT_RING + 10
    await st.append_events([Event(id=i, event="x", sessionId="a" if i % 2 else "b", timestamp=0)
                            for i in range(1, n + 1)])
    assert await st.last_event_id() == n
    got = await st.read_events(session_id="a", after_id=n - 10)
    assert [e.id for e in got] == [i for i in range(n - 9, n + 1) if i % 2]
    assert [e.id for e in await st.read_events(session_id=None, after_id=n - 3)] == [n - 2, n - 1, n]
    await st.close()
    st2 = FileStore(tmp_path)
    await st2.open()
    assert await st2.last_event_id() == n
    # compaction keeps each session's log bounded
    await st2.append_events([Event(id=n + i, event="x", sessionId="a", timestamp=0) for i in range(1, 2 * EVENT_RING)])
    lines = (tmp_path / "events" / "a.jsonl").read_bytes().count(b"\n")
    assert lines <= 2 * EVENT_RING
    await st2.close()


async def test_single_writer_lock(tmp_path: Path) -> None:
    st = FileStore(tmp_path)
    await st.open()
    with pytest.raises(Unavailable, match="another aegisd"):
        await FileStore(tmp_path).open()
    await st.close()
    st3 = FileStore(tmp_path)
    await st3.open()
    await st3.close()


async def test_newer_schema_refused(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "store.json").write_text(json.dumps({"schemaVersion": 999}))
    with pytest.raises(Unavailable, match="schema version 999"):
        await FileStore(tmp_path).open()


async def test_torn_line_and_stray_tmp_repaired(tmp_path: Path) -> None:
    st = FileStore(tmp_path)
    await st.open()
    await st.append_transcript("s1", [entry(1), entry(2)])
    await st.save_session(rec(1))
    await st.close()
    with open(tmp_path / "transcripts" / "s1.jsonl", "ab") as f:
        f.write(b'{"id":3,"role":"assi')  # a crash mid-write
    (tmp_path / "sessions" / "s9.json.tmp").write_text("{half")
    (tmp_path / "sessions" / "bad.json").write_text("not json")
    st2 = FileStore(tmp_path)
    await st2.open()
    assert await st2.transcript_count("s1") == 2
    await st2.append_transcript("s1", [entry(3)])
    assert [e.id for e in await st2.read_transcript("s1")] == [1, 2, 3]
    assert [r.id for r in await st2.load_sessions()] == ["s1"]  # unreadable record skipped, tmp removed
    assert not (tmp_path / "sessions" / "s9.json.tmp").exists()
    await st2.close()


_WRITER = """
import os, sys, trio
from aegisd.store._file import FileStore
from aegisd.models import SessionRecord, TranscriptEntry
async def main():
    st = FileStore(sys.argv[1]); await st.open()
    for i in range(1, 51):
        await st.save_session(SessionRecord(id=f"s{i}", workDir="/w", createdAt=i))
        e = TranscriptEntry(id=i, role="user", contentType="text", text="x", timestamp=i)
        await st.append_transcript("s1", [e])
        print(i, flush=True)   # acknowledged
    await trio.sleep(3600)
trio.run(main)
"""


def test_nothing_acknowledged_is_lost_on_sigkill(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acked = 0
    for line in proc.stdout:
        acked = int(line)
        if acked == 50:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()

    import trio

    async def check() -> None:
        st = FileStore(tmp_path)
        await st.open()  # the lock died with the process
        assert len(await st.load_sessions()) == acked
        assert await st.transcript_count("s1") == acked
        await st.close()
    trio.run(check)
