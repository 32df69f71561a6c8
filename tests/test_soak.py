"""The kill -9 soak (issue 13, item 6): the real daemon runs a mixed workload (creates with a first prompt,
sends, approvals of permission prompts, kills) and is SIGKILLed at random moments, then restarted on the same
store; after every restart each operation the daemon acknowledged is checked:

- every acknowledged create exists, every acknowledged kill is ``killed``;
- every acknowledged approval took effect (its ``approved: <option>`` entry is in the session's transcript);
- every acknowledged prompt is in the transcript exactly once as a user entry (lost = 0, duplicated = 0);
- transcript entry ids and event ids are never reused: an id seen before a kill means the same entry after it;
- no orphan: every fake agent of the killed daemon is gone (the lifeline reaper's job), checked by pid;
- no corrupt store: the daemon starts again.

Environment: AEGIS_SOAK_KILLS (20), AEGIS_SOAK_STORE (file | postgres | redis: AEGIS_TEST_PG_URL /
AEGIS_TEST_REDIS_URL, fresh tables / key prefix), AEGIS_SOAK_SEED (random; printed). One run feeds the tests
below, one per check, so that a failing check does not hide the others. `make soak` runs it longer on every
configured store; docs/reliability.md has the figures."""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from .conftest import FAKE_AGENT, USER_AEGIS_ENV, drop_store, pid_alive, start_daemon_process

# (conftest takes every AEGIS_* variable out of the tests' environment; these are read from what it took)
_ENV = {**os.environ, **USER_AEGIS_ENV}
KILLS = int(_ENV.get("AEGIS_SOAK_KILLS") or 20)
STORE = _ENV.get("AEGIS_SOAK_STORE") or "file"
SEED = int(_ENV.get("AEGIS_SOAK_SEED") or random.SystemRandom().randrange(2**32))
VERBOSE = bool(_ENV.get("AEGIS_SOAK_VERBOSE"))  # a line per kill and restart
WORKERS = 3  # concurrent clients
MAX_LIVE = 6  # live sessions the workload keeps at most
RUN_S = (0.4, 2.0)  # how long the workload runs before the kill (uniform)
EARLY = 0.1  # the share of restarts killed again within 0.3 s, while they resume their sessions (unchecked)
SETTLE_S = 20.0  # after a restart, how long the sessions may take to be quiet again
ORPHAN_WAIT_S = 10.0  # the reaper's grace is 2 s

pytestmark = [pytest.mark.soak, pytest.mark.timeout(max(600, KILLS * 30))]
TERMINAL = {"completed", "killed", "crashed"}


class RpcError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class Unreachable(Exception):
    """The daemon did not answer (it was killed): the operation is not acknowledged."""


class Rpc:
    """A minimal async client of the control socket: one connection per call, one line per frame."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    async def _open(self, op: str, params: dict[str, Any]) -> tuple[trio.SocketStream, bytearray]:
        try:
            stream = await trio.open_unix_socket(self.path)
        except OSError as exc:
            raise Unreachable(f"{op}: {exc}") from None
        try:
            await stream.send_all(json.dumps({"id": 1, "op": op, "params": params}).encode() + b"\n")
        except BaseException as exc:  # cancelled too: the socket is closed either way
            stream.socket.close()
            if isinstance(exc, (OSError, trio.BrokenResourceError)):
                raise Unreachable(f"{op}: {exc}") from None
            raise
        return stream, bytearray()

    @staticmethod
    async def _frame(stream: trio.SocketStream, buf: bytearray, op: str) -> dict[str, Any]:
        while b"\n" not in buf:
            try:
                chunk = await stream.receive_some(1 << 16)
            except (OSError, trio.BrokenResourceError) as exc:
                raise Unreachable(f"{op}: {exc}") from None
            if not chunk:
                raise Unreachable(f"{op}: connection closed")
            buf += chunk
        line, _, rest = bytes(buf).partition(b"\n")
        buf[:] = rest
        return json.loads(line)  # type: ignore[no-any-return]

    @staticmethod
    def _result(frame: dict[str, Any]) -> Any:
        if frame.get("ok"):
            return frame["result"]
        err = frame.get("error") or {}
        raise RpcError(str(err.get("code")), str(err.get("message")))

    async def call(self, op: str, **params: Any) -> Any:
        stream, buf = await self._open(op, params)
        async with stream:
            return self._result(await self._frame(stream, buf, op))

    async def stream(self, op: str, **params: Any) -> AsyncIterator[dict[str, Any]]:
        stream, buf = await self._open(op, params)
        async with stream:
            while True:
                frame = await self._frame(stream, buf, op)
                if "event" in frame:
                    yield frame["event"]
                else:
                    self._result(frame)
                    return


def canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


@dataclass
class Prompt:
    sid: str
    text: str
    gen: int


@dataclass
class Approval:
    sid: str
    title: str  # the tool's title: unique in this workload (a prompt's tag), so the request is known for sure
    text: str  # the transcript's decision entry: "approved: <optionId>"


@dataclass
class Soak:
    """What the daemon acknowledged, what was observed, and what the checks found."""

    seed: int
    kills: int
    store: str
    # acknowledged operations
    creates: dict[str, int] = field(default_factory=dict)  # session id -> generation
    prompts: list[Prompt] = field(default_factory=list)
    approvals: list[Approval] = field(default_factory=list)
    killed: dict[str, int] = field(default_factory=dict)
    kill_attempts: set[str] = field(default_factory=set)  # acknowledged or not: may have dropped queued prompts
    # observations: id -> canonical content, first seen
    events: dict[int, str] = field(default_factory=dict)
    entries: dict[tuple[str, int], str] = field(default_factory=dict)
    unchecked_events: list[int] = field(default_factory=list)  # seen live since the last check
    # findings (sets of keys, so that a problem seen at several restarts counts once)
    lost_creates: set[str] = field(default_factory=set)
    lost_kills: set[str] = field(default_factory=set)
    lost_approvals: set[int] = field(default_factory=set)
    lost_prompts: set[int] = field(default_factory=set)
    duplicated_prompts: set[int] = field(default_factory=set)
    dropped_by_kill: set[int] = field(default_factory=set)
    reused_entries: set[tuple[str, int]] = field(default_factory=set)
    vanished_entries: set[tuple[str, int]] = field(default_factory=set)
    reused_events: set[int] = field(default_factory=set)
    orphans: list[int] = field(default_factory=list)
    crashed: dict[str, str] = field(default_factory=dict)  # session -> reason (none is expected)
    unsettled: int = 0
    restarts: int = 0
    early_kills: int = 0
    examples: list[str] = field(default_factory=list)

    def note(self, what: str) -> None:
        if len(self.examples) < 40:
            self.examples.append(what)

    def observe_event(self, ev: dict[str, Any]) -> None:
        eid = int(ev["id"])
        c = canon(ev)
        seen = self.events.get(eid)
        if seen is None:
            self.events[eid] = c
            self.unchecked_events.append(eid)
        elif seen != c and eid not in self.reused_events:
            self.reused_events.add(eid)
            self.note(f"event id {eid} reused: was {seen[:160]} now {c[:160]}")

    def observe_entry(self, sid: str, entry: dict[str, Any]) -> None:
        key = (sid, int(entry["id"]))
        c = canon(entry)
        seen = self.entries.get(key)
        if seen is None:
            self.entries[key] = c
        elif seen != c and key not in self.reused_entries:
            self.reused_entries.add(key)
            self.note(f"transcript id {key[1]} of {sid[:8]} reused: was {seen[:120]} now {c[:120]}")

    def summary(self) -> str:
        p_checked = len(self.prompts) - len(self.dropped_by_kill)
        in_crashed = sum(1 for i in self.lost_prompts if self.prompts[i].sid in self.crashed)
        return (f"soak store={self.store} seed={self.seed}: kills {self.restarts}/{self.kills} ({self.early_kills} "
                f"during a resume); checked "
                f"creates {len(self.creates)}, prompts {p_checked} (+{len(self.dropped_by_kill)} dropped with "
                f"their killed session), approvals {len(self.approvals)}, kills {len(self.killed)}, "
                f"events {len(self.events)}, transcript entries {len(self.entries)}; "
                f"lost: creates {len(self.lost_creates)}, kills {len(self.lost_kills)}, approvals "
                f"{len(self.lost_approvals)}, prompts {len(self.lost_prompts)} ({in_crashed} in sessions that "
                f"crashed at a restart); duplicated prompts "
                f"{len(self.duplicated_prompts)}; reused ids: transcript {len(self.reused_entries)} (in "
                f"{len({s for s, _ in self.reused_entries})} sessions; {len(self.vanished_entries)} entries seen "
                f"then gone), events {len(self.reused_events)}; orphans {len(self.orphans)}; unsettled "
                f"{self.unsettled}; crashed sessions {len(self.crashed)} ("
                f"{len(self.crashed.keys() & self.creates.keys())} of acknowledged creates)")


# ---- processes ------------------------------------------------------------------------------------------
def agents_of(marker: str) -> list[int]:
    """Pids of the fake agents whose environment carries ``marker`` (FAKE_ACP_SOAK_GEN=…)."""
    want = f"FAKE_ACP_SOAK_GEN={marker}".encode()
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if FAKE_AGENT.encode() not in f.read():
                    continue
            with open(f"/proc/{d}/environ", "rb") as f:
                if want not in f.read().split(b"\0"):
                    continue
        except OSError:
            continue
        if pid_alive(int(d)):
            found.append(int(d))
    return found


# ---- the workload ---------------------------------------------------------------------------------------
class Generation:
    """One daemon's life: its live sessions as the events tell them, and the workers acting on them."""

    def __init__(self, soak: Soak, rpc: Rpc, rng: random.Random, gen: int, work: Path) -> None:
        self.soak, self.rpc, self.rng, self.gen, self.work = soak, rpc, rng, gen, work
        self.live: dict[str, str] = {}  # session id -> status
        self.pending: dict[str, list[tuple[str, str]]] = {}  # session -> [(requestId, toolTitle)]
        self.tags = 0

    def prompt_text(self) -> str:
        self.tags += 1
        tag = f"g{self.gen}n{self.tags}r{self.rng.randrange(10**6)}"
        r = self.rng.random()
        if r < 0.35:
            return f"say:{tag}"
        if r < 0.60:
            return f"sleep:{self.rng.randint(50, 400)};say:{tag}"
        if r < 0.85:
            return f"tool:execute:T{tag}:echo {tag}"
        if r < 0.95:
            return f"chunks:3:{tag}-{tag}-{tag}"
        return f"tools:2:execute:T{tag}:echo {tag}"

    def on_event(self, ev: dict[str, Any]) -> None:
        if ev["event"] == "overflow":  # the stream's marker (it carries the last id delivered): not an event
            return
        self.soak.observe_event(ev)
        sid, name, data = ev.get("sessionId") or "", ev["event"], ev.get("data") or {}
        if name == "message":
            self.soak.observe_entry(sid, data)
        elif name == "created":
            self.live.setdefault(sid, "pending")
        elif name == "status":
            if data.get("status") in TERMINAL:
                self.live.pop(sid, None)
                self.pending.pop(sid, None)
            elif sid in self.live or sid in self.soak.creates:
                self.live[sid] = data["status"]
                if data["status"] != "permission_prompt":
                    self.pending.pop(sid, None)
        elif name == "ended":
            self.live.pop(sid, None)
            self.pending.pop(sid, None)
        elif name == "permission.decided" and not data.get("auto"):
            self.pending[sid] = [p for p in self.pending.get(sid, []) if p[0] != data.get("requestId")]
        elif name == "permission.requested" and data.get("requestId"):
            self.pending.setdefault(sid, []).append((data["requestId"], data.get("toolTitle") or ""))

    async def follow(self, after_id: int) -> None:
        try:
            async with aclosing(self.rpc.stream("events.follow", afterId=after_id)) as events:
                async for ev in events:
                    self.on_event(ev)
        except Unreachable:
            await trio.sleep_forever()  # the daemon is gone; the generation ends

    async def create(self) -> None:
        text = self.prompt_text()
        self.work.mkdir(exist_ok=True)
        res = await self.rpc.call("session.create", workDir=str(self.work), prompt=text, reuse=False)
        sid = res["id"]
        self.soak.creates[sid] = self.gen
        delivery = res.get("promptDelivery") or {}
        if delivery.get("delivered") or delivery.get("queued"):
            self.soak.prompts.append(Prompt(sid, text, self.gen))
        if res["status"] not in TERMINAL:
            self.live.setdefault(sid, res["status"])

    async def send(self, sid: str) -> None:
        text = self.prompt_text()
        await self.rpc.call("session.send", id=sid, text=text)
        self.soak.prompts.append(Prompt(sid, text, self.gen))

    async def approve(self, sid: str) -> None:
        head = self.pending[sid][0]
        res = await self.rpc.call("session.approve", id=sid, requestId=head[0])
        self.soak.approvals.append(Approval(sid, head[1], f"approved: {res['optionId']}"))

    async def kill(self, sid: str) -> None:
        self.soak.kill_attempts.add(sid)
        await self.rpc.call("session.kill", id=sid)
        self.soak.killed[sid] = self.gen
        self.live.pop(sid, None)

    async def worker(self) -> None:
        rng = self.rng
        while True:
            live = list(self.live)
            waiting = [s for s, p in self.pending.items() if p]
            r = rng.random()
            try:
                if (not live or r < 0.15) and len(live) < MAX_LIVE:
                    await self.create()
                elif waiting and r < 0.5:
                    await self.approve(rng.choice(waiting))
                elif live and (r < 0.93 or len(live) <= 2):
                    await self.send(rng.choice(live))
                elif live:
                    await self.kill(rng.choice(live))
            except RpcError:
                pass  # refused (not live any more, nothing pending…): not acknowledged, nothing to check
            except Unreachable:
                await trio.sleep_forever()  # the daemon is gone; the generation ends
            await trio.sleep(rng.uniform(0.01, 0.08))


# ---- the checks after a restart ------------------------------------------------------------------------
async def all_sessions(rpc: Rpc) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    page = 1
    while True:
        res = await rpc.call("session.list", page=page, limit=100)
        out.update({s["id"]: s for s in res["sessions"]})
        if page >= res["pagination"]["totalPages"]:
            return out
        page += 1


async def transcript(rpc: Rpc, sid: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    page = 1
    while True:
        res = await rpc.call("session.transcript", id=sid, page=page, limit=200)
        out += res["messages"]
        if not res["hasMore"]:
            return out
        page += 1


async def settle(soak: Soak, rpc: Rpc) -> dict[str, dict[str, Any]]:
    """Wait until every session is idle or ended with nothing queued (approving what asks), so that what the
    restart replays has been delivered before it is counted."""
    deadline = trio.current_time() + SETTLE_S
    while True:
        sessions = await all_sessions(rpc)
        busy = [s for s in sessions.values() if s["status"] not in TERMINAL | {"idle"}]
        for s in busy:
            if s["status"] == "permission_prompt" and s.get("pendingPermission"):
                try:
                    res = await rpc.call("session.approve", id=s["id"],
                                         requestId=s["pendingPermission"]["requestId"])
                except RpcError:
                    continue
                soak.approvals.append(Approval(s["id"], s["pendingPermission"]["toolTitle"],
                                               f"approved: {res['optionId']}"))
        if not busy:
            queued = 0
            for s in sessions.values():
                if s["status"] == "idle":
                    queued += (await rpc.call("session.health", id=s["id"]))["queuedPrompts"]
            if not queued:
                return sessions
        if trio.current_time() > deadline:
            soak.unsettled += 1
            soak.note(f"not settled after {SETTLE_S} s: {[(s['id'][:8], s['status']) for s in busy]}")
            return sessions
        await trio.sleep(0.2)


@dataclass
class Seen:
    """What one read of a session's transcript holds, for the checks."""

    users: collections.Counter[str]
    decisions: dict[str, list[str]]  # a permission request's tool title -> the decisions taken on it


def decisions(entries: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each permission request (by its tool's title) and the decision entries that answer it: the next ones
    with its toolUseId (the fake agent's tool call ids repeat across its restarts, the titles do not)."""
    out: dict[str, list[str]] = {}
    open_requests: dict[str | None, str] = {}
    for e in entries:
        if e["contentType"] == "permission_request":
            title = e.get("toolName") or ""
            out.setdefault(title, [])
            open_requests[e.get("toolUseId")] = title
        elif e["contentType"] == "permission_decision" and e.get("toolUseId") in open_requests:
            out[open_requests[e.get("toolUseId")]].append(e["text"])
    return out


async def check(soak: Soak, rpc: Rpc, gen: int, frozen: dict[str, Seen]) -> None:
    sessions = await settle(soak, rpc)
    for sid in soak.creates:
        if sid not in sessions and sid not in soak.lost_creates:
            soak.lost_creates.add(sid)
            soak.note(f"acknowledged create {sid} is gone")
    for sid in soak.killed:
        if sessions.get(sid, {}).get("status") != "killed" and sid not in soak.lost_kills:
            soak.lost_kills.add(sid)
            soak.note(f"acknowledged kill of {sid} is {sessions.get(sid, {}).get('status')}")
    for sid, s in sessions.items():
        if s["status"] == "crashed" and sid not in soak.crashed:
            soak.crashed[sid] = (s.get("crash") or {}).get("reason") or ""
            acked = "acknowledged" if sid in soak.creates else "not acknowledged"
            soak.note(f"session {sid[:8]} (create {acked}) crashed: {soak.crashed[sid]}")
    seen: dict[str, Seen] = {}
    for sid, s in sessions.items():
        if sid in frozen:  # ended before the previous check: nothing can change
            seen[sid] = frozen[sid]
            continue
        entries = await transcript(rpc, sid)
        ids = [int(e["id"]) for e in entries]
        if len(set(ids)) != len(ids):
            for i, n in collections.Counter(ids).items():
                if n > 1 and (sid, i) not in soak.reused_entries:
                    soak.reused_entries.add((sid, i))
                    soak.note(f"transcript id {i} of {sid[:8]} appears {n} times")
        for e in entries:
            soak.observe_entry(sid, e)
        present = set(ids)
        for key in [k for k in soak.entries if k[0] == sid and k[1] not in present]:
            if key not in soak.vanished_entries:
                soak.vanished_entries.add(key)
                soak.note(f"transcript entry {key[1]} of {sid[:8]} was seen, then gone")
        seen[sid] = Seen(collections.Counter(e["text"] for e in entries if e["role"] == "user"), decisions(entries))
        if s["status"] in TERMINAL:
            frozen[sid] = seen[sid]
    for i, p in enumerate(soak.prompts):
        got = seen[p.sid].users[p.text] if p.sid in seen else 0
        if got > 1 and i not in soak.duplicated_prompts:
            soak.duplicated_prompts.add(i)
            soak.note(f"prompt {p.text!r} (gen {p.gen}) is {got} times in {p.sid[:8]}")
        elif got == 0 and i not in soak.lost_prompts:
            if p.sid in soak.kill_attempts:  # a kill drops what is queued: asked for, not lost
                soak.dropped_by_kill.add(i)
            else:
                soak.lost_prompts.add(i)
                s = sessions.get(p.sid) or {}
                why = f": {s['crash'].get('reason')}" if s.get("crash") else ""
                soak.note(f"prompt {p.text!r} (gen {p.gen}) lost in {p.sid[:8]} ({s.get('status')}{why})")
        elif got == 1:
            soak.dropped_by_kill.discard(i)
    for i, a in enumerate(soak.approvals):
        taken = seen[a.sid].decisions.get(a.title) if a.sid in seen else None
        if taken != [a.text] and i not in soak.lost_approvals:
            soak.lost_approvals.add(i)
            soak.note(f"approval of {a.title!r} in {a.sid[:8]}: {'no request' if taken is None else taken}")
    # events: what was seen since the last check is read back from the store (earlier ones were compared at
    # the earlier checks); the same id must be the same event
    after = min(soak.unchecked_events, default=max(soak.events, default=1)) - 1
    soak.unchecked_events.clear()
    while True:
        res = await rpc.call("events.poll", afterId=after, limit=1000, timeoutSeconds=0.2)
        for ev in res["events"]:
            soak.observe_event(ev)
        if res["timedOut"] or not res["events"]:
            return
        after = res["lastId"]


async def run_soak(base: Path, sock_dir: Path, store_env: dict[str, str], soak: Soak,
                   report: Any) -> None:
    rng = random.Random(soak.seed)
    token = uuid.uuid4().hex[:10]
    work = base / "w"
    frozen: dict[str, Seen] = {}
    async with trio.open_nursery() as nursery:
        for gen in range(soak.kills + 1):
            env = dict(store_env, FAKE_ACP_SOAK_GEN=f"{token}-{gen}", AEGIS_MAX_SESSIONS="100")
            t_start = trio.current_time()
            try:
                dp = await start_daemon_process(base, sock_dir, extra_env=env, nursery=nursery, timeout=60)
            except (AssertionError, trio.TooSlowError) as exc:  # a corrupt store stops the daemon at start
                raise AssertionError(f"aegisd did not start again after kill {gen} ({soak.summary()}): "
                                     f"{exc}") from None
            rpc = Rpc(dp.socket)
            t_up = trio.current_time()
            try:
                soak.restarts += bool(gen)
                if 0 < gen < soak.kills and rng.random() < EARLY:  # while it resumes its sessions
                    run_for = rng.uniform(0, 0.3)
                    await trio.sleep(run_for)
                    os.kill(dp.proc.pid, signal.SIGKILL)
                    t_killed = trio.current_time()
                    await dp.proc.wait()
                    soak.early_kills += 1
                    report(f"[soak] restart {gen} (start {t_up - t_start:.1f} s), killed during the resume")
                    await reap(soak, token, gen, t_killed, run_for, report)
                    continue
                if gen:
                    await check(soak, rpc, gen, frozen)
                    report(f"[soak] restart {gen} (start {t_up - t_start:.1f} s, check "
                           f"{trio.current_time() - t_up:.1f} s): {soak.summary()}")
                if gen == soak.kills:
                    dp.proc.send_signal(signal.SIGTERM)
                    with trio.fail_after(30):
                        await dp.proc.wait()
                    break
                g = Generation(soak, rpc, rng, gen, work)
                for s in (await all_sessions(rpc)).values():
                    if s["status"] not in TERMINAL:
                        g.live[s["id"]] = s["status"]
                        if s.get("pendingPermission"):
                            p = s["pendingPermission"]
                            g.pending[s["id"]] = [(p["requestId"], p["toolTitle"])]
                run_for = rng.uniform(*RUN_S)
                async with trio.open_nursery() as inner:
                    inner.start_soon(g.follow, max(soak.events, default=0))  # from the last one seen
                    for _ in range(WORKERS):
                        inner.start_soon(g.worker)
                    await trio.sleep(run_for)
                    os.kill(dp.proc.pid, signal.SIGKILL)
                    t_killed = trio.current_time()
                    await dp.proc.wait()
                    inner.cancel_scope.cancel()
            finally:
                if dp.proc.returncode is None:
                    dp.proc.kill()
                    await dp.proc.wait()
            await reap(soak, token, gen, t_killed, run_for, report)


async def reap(soak: Soak, token: str, gen: int, t_killed: float, run_for: float, report: Any) -> None:
    """No orphan: the killed daemon's lifeline reaper takes every agent down (checked by pid)."""
    marker = f"{token}-{gen}"
    with trio.move_on_after(ORPHAN_WAIT_S):
        while agents_of(marker):
            await trio.sleep(0.05)
    left = agents_of(marker)
    report(f"[soak] kill {gen + 1} after {run_for:.1f} s; its agents gone {trio.current_time() - t_killed:.1f} s later")
    if left:
        soak.orphans += left
        soak.note(f"agents of the daemon killed at {gen + 1} still alive after {ORPHAN_WAIT_S} s: {left}")
        for pid in left:
            os.kill(pid, signal.SIGKILL)


def store_env(kind: str, name: str) -> dict[str, str]:
    if kind == "file":
        return {}
    if kind == "postgres":
        return {"AEGIS_SESSION_STORE": "postgres", "AEGIS_POSTGRES_URL": os.environ["AEGIS_TEST_PG_URL"],
                "AEGIS_PG_TABLE": name}
    if kind == "redis":
        return {"AEGIS_SESSION_STORE": "redis", "AEGIS_REDIS_URL": os.environ["AEGIS_TEST_REDIS_URL"],
                "AEGIS_REDIS_KEY_PREFIX": name}
    raise ValueError(f"AEGIS_SOAK_STORE must be file, postgres or redis, not {kind!r}")


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Soak]:
    if STORE == "postgres" and not os.environ.get("AEGIS_TEST_PG_URL"):
        pytest.skip("AEGIS_SOAK_STORE=postgres but AEGIS_TEST_PG_URL is not set")
    if STORE == "redis" and not os.environ.get("AEGIS_TEST_REDIS_URL"):
        pytest.skip("AEGIS_SOAK_STORE=redis but AEGIS_TEST_REDIS_URL is not set")
    capture = request.config.pluginmanager.getplugin("capturemanager")

    def say(line: str) -> None:  # past the output capture: the seed and the summary are always shown
        if capture is not None:
            with capture.global_and_fixture_disabled():
                print(line, flush=True)
        else:
            print(line, flush=True)

    def report(line: str) -> None:
        if VERBOSE:
            say(line)

    base = tmp_path_factory.mktemp("soak")
    import shutil
    import tempfile

    sock_dir = Path(tempfile.mkdtemp(prefix="ag-soak-", dir="/tmp"))
    name = f"soak{uuid.uuid4().hex[:10]}"
    result = Soak(seed=SEED, kills=KILLS, store=STORE)
    say(f"\n[soak] store={STORE} kills={KILLS} seed={SEED} (AEGIS_SOAK_SEED to repeat)")
    try:
        trio.run(run_soak, base, sock_dir, store_env(STORE, name), result, report)
    finally:
        if STORE != "file":
            drop_store(STORE, name)
        shutil.rmtree(sock_dir, ignore_errors=True)
        say(f"[soak] {result.summary()}")
        for line in result.examples[:20]:
            say(f"[soak]   {line}")
    yield result


def test_soak_daemon_restarts_after_every_kill(soak: Soak) -> None:
    assert soak.restarts == soak.kills, soak.summary()


def test_soak_acknowledged_creates_kills_and_approvals_survive(soak: Soak) -> None:
    assert soak.creates and soak.approvals and soak.killed, f"the workload did too little: {soak.summary()}"
    assert not soak.lost_creates and not soak.lost_kills and not soak.lost_approvals, soak.summary()


def test_soak_acknowledged_prompts_are_delivered_exactly_once(soak: Soak) -> None:
    assert len(soak.prompts) > len(soak.dropped_by_kill), soak.summary()
    assert not soak.lost_prompts and not soak.duplicated_prompts, soak.summary()


def test_soak_transcript_ids_are_never_reused(soak: Soak) -> None:
    assert soak.entries, soak.summary()
    assert not soak.reused_entries and not soak.vanished_entries, soak.summary()


def test_soak_event_ids_are_never_reused(soak: Soak) -> None:
    assert soak.events, soak.summary()
    assert not soak.reused_events, soak.summary()


def test_soak_leaves_no_orphan_agent(soak: Soak) -> None:
    assert not soak.orphans, soak.summary()


def test_soak_sessions_settle_after_a_restart(soak: Soak) -> None:
    assert not soak.unsettled, soak.summary()
