"""The `cluster` section of `make bench` (bench/run.py): aegisd nodes sharing one PostgreSQL schema (issue 15).

  list      GET /v1/sessions?limit=100 through each of 3 nodes that hold 300 fake-agent sessions between them
            (100 each)  vs  the same request on a single-node daemon holding 300 sessions (its own schema on the
            same PostgreSQL, alive at the same time)
  approve   POST /v1/sessions/{id}/approve sent to n2 for a session n1 runs (forwarded)  vs  the same sent to n1
  events    a `say:` chunk of a session on n1 -> its frame on a /v1/events stream held on n3  vs  on a stream held
            on n1; both streams are open at once, so every chunk is measured on both (the event's own
            `timestamp` against this machine's clock, which every process shares)
  failover  kill -9 of a node running 20 sessions -> every one of them `idle` on another node, with the lease at
            15 s (the default) and at 3 s; the lease is the yardstick (target: lease + 5 s), no baseline

PostgreSQL: AEGIS_BENCH_PG_URL, else AEGIS_TEST_PG_URL, else postgresql://postgres@127.0.0.1:5432/test if
pg_isready answers there; without one the section is skipped. Each cluster gets a fresh schema, dropped at the end;
its daemons are ended with kill -9 (a graceful stop would hand their sessions to the nodes still running)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from run import Daemon, interleave, pct, show, spread  # bench/run.py (the script's directory is on sys.path)

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
LIST = "/v1/sessions?limit=100"
ASK = "tool:edit:Edit file:x"


def pg_url() -> tuple[str | None, str]:
    """The PostgreSQL to run on, and where it came from (or why there is none)."""
    for var in ("AEGIS_BENCH_PG_URL", "AEGIS_TEST_PG_URL"):
        if os.environ.get(var):
            return os.environ[var], var
    if shutil.which("pg_isready") is None:
        return None, "AEGIS_BENCH_PG_URL / AEGIS_TEST_PG_URL not set and no pg_isready to look for a local server"
    ok = subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"], check=False).returncode == 0
    if not ok:
        return None, "AEGIS_BENCH_PG_URL / AEGIS_TEST_PG_URL not set and nothing answers pg_isready on 127.0.0.1:5432"
    return DEFAULT_PG, "pg_isready on 127.0.0.1:5432"


def drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def procs_with_env(marker: bytes) -> list[int]:
    """Every process on this machine whose environment holds ``marker`` (KEY=value)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue
        except (OSError, IndexError):
            continue
        if marker in env:
            out.append(int(entry))
    return out


class Http:
    """One keep-alive HTTP/1.1 connection; each call answers (status, decoded JSON, seconds)."""

    def __init__(self, d: Daemon) -> None:
        self.host, self.port = d.host, d.port
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, float]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        t0 = time.perf_counter()
        self.conn.request(method, path, body=data, headers=headers)
        r = self.conn.getresponse()
        raw = r.read()
        elapsed = time.perf_counter() - t0
        if r.getheader("connection", "").lower() == "close":
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        return r.status, json.loads(raw) if raw else None, elapsed

    def ok(self, method: str, path: str, body: Any = None) -> tuple[Any, float]:
        status, data, elapsed = self.call(method, path, body)
        if status not in (200, 201):
            raise RuntimeError(f"{method} {path}: {status} {data}")
        return data, elapsed

    def close(self) -> None:
        self.conn.close()


class Cluster:
    """Nodes on one fresh schema: their own state dirs, sockets and ids; one agent "machine" (FAKE_ACP_STATE_DIR,
    so a session/load on any node finds what the agent kept) and one workDir root every node admits."""

    def __init__(self, base: Path, pg: str, lease_ms: int) -> None:
        self.base, self.pg, self.lease_ms = base, pg, lease_ms
        self.schema = f"agb_{uuid.uuid4().hex[:12]}"
        self.work = base / "w"
        self.work.mkdir(parents=True, exist_ok=True)
        self.fake = base / "fake-acp"
        self.nodes: dict[str, Daemon] = {}

    def start(self, *names: str) -> None:
        def one(name: str) -> Daemon:
            env = {"AEGIS_SESSION_STORE": "postgres", "AEGIS_POSTGRES_URL": self.pg, "AEGIS_PG_SCHEMA": self.schema,
                   "AEGIS_NODE_ID": name, "AEGIS_NODE_LEASE_MS": str(self.lease_ms),
                   "AEGIS_ALLOWED_WORK_DIRS": str(self.work), "FAKE_ACP_STATE_DIR": str(self.fake)}
            (self.base / name).mkdir(exist_ok=True)
            return Daemon(self.base / name, env)
        with ThreadPoolExecutor(len(names)) as pool:
            for name, d in zip(names, pool.map(one, names)):
                self.nodes[name] = d

    def create(self, counts: dict[str, int], work: Path | None = None) -> dict[str, list[str]]:
        """``counts[node]`` sessions on each node (created through its own socket, placed on it by name), a few
        at a time; returns their ids by node. `session.create` answers once the session is idle."""
        work = work or self.work
        work.mkdir(exist_ok=True)

        def one(node: str) -> str:
            c = self.nodes[node].client()
            return str(c.call("session.create", workDir=str(work), reuse=False, node=node)["id"])
        todo = [node for node, n in counts.items() for _ in range(n)]
        todo = [todo[i] for i in sorted(range(len(todo)), key=lambda i: i % max(1, max(counts.values())))]
        out: dict[str, list[str]] = {node: [] for node in counts}
        with ThreadPoolExecutor(6) as pool:
            for node, sid in zip(todo, pool.map(one, todo)):
                out[node].append(sid)
        return out

    def kill(self, name: str) -> None:
        d = self.nodes[name]
        d.proc.kill()
        d.proc.wait(30)
        d.log.close()

    def close(self) -> None:
        """kill -9 every node (their agents end with them: the lifeline), then drop the schema."""
        for d in self.nodes.values():
            if d.proc.poll() is None:
                d.proc.kill()
        for d in self.nodes.values():
            d.proc.wait(30)
            if not d.log.closed:
                d.log.close()
        marker = f"FAKE_ACP_STATE_DIR={self.fake}".encode()
        deadline = time.monotonic() + 30
        while (left := procs_with_env(marker)) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in procs_with_env(marker):  # outlived their daemon's lifeline: ours to end
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        if left:
            print(f"    ({len(left)} agents outlived their killed daemons by 30 s; killed)", flush=True)
        drop_schema(self.pg, self.schema)


def wait_status(h: Http, sid: str, status: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        s, _ = h.ok("GET", f"/v1/sessions/{sid}")
        if s["status"] == status:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"session {sid} is {s['status']}, not {status}, after {timeout} s")
        time.sleep(0.002)


# ---- GET /v1/sessions ------------------------------------------------------------------------------------------
def list_batch(h: Http, n: int) -> list[float]:
    return [h.ok("GET", LIST)[1] * 1000 for _ in range(n)]


def bench_list(single: Http, nodes: dict[str, Http], rounds: int, per: int) -> dict[str, Any]:
    def measured() -> dict[str, list[float]]:
        return {name: list_batch(h, per) for name, h in nodes.items()}
    # the baseline takes as many samples as the three nodes together, so each p99 is of as many
    pairs = interleave(rounds, lambda: list_batch(single, per * len(nodes)), measured)
    pooled: list[list[float]] = [sum(m.values(), []) for _, m in pairs]
    base_all: list[float] = sum((b for b, _ in pairs), [])
    node_all = sum(pooled, [])
    by_node: dict[str, list[float]] = {name: sum((m[name] for _, m in pairs), []) for name in nodes}
    out: dict[str, Any] = {
        "p50": show("cluster: GET /v1/sessions p50", "any node / single node",
                    [pct(m, 50) / pct(b, 50) for (b, _), m in zip(pairs, pooled)],
                    f"({pct(node_all, 50):.1f} ms vs {pct(base_all, 50):.1f} ms)"),
        "p99": show("cluster: GET /v1/sessions p99", "any node / single node",
                    [pct(m, 99) / pct(b, 99) for (b, _), m in zip(pairs, pooled)],
                    f"({pct(node_all, 99):.1f} ms vs {pct(base_all, 99):.1f} ms; "
                    + ", ".join(f"{n} {pct(v, 50):.1f}/{pct(v, 99):.1f}" for n, v in by_node.items()) + " ms p50/p99)")}
    out.update({"ms": {"p50": pct(node_all, 50), "p99": pct(node_all, 99)},
                "single_ms": {"p50": pct(base_all, 50), "p99": pct(base_all, 99)},
                "by_node_ms": {n: {"p50": pct(v, 50), "p99": pct(v, 99)} for n, v in by_node.items()},
                "samples": len(node_all), "baseline_samples": len(base_all)})
    return out


# ---- approve ---------------------------------------------------------------------------------------------------
def approve_batch(owner: Http, via: Http, sid: str, n: int) -> list[float]:
    """``n`` permission requests on ``sid`` (asked through its owner), each approved through ``via``: ms from the
    POST to its 200."""
    out = []
    for _ in range(n):
        owner.ok("POST", f"/v1/sessions/{sid}/send", {"text": ASK})
        wait_status(owner, sid, "permission_prompt")
        _, elapsed = via.ok("POST", f"/v1/sessions/{sid}/approve", {})
        out.append(elapsed * 1000)
        wait_status(owner, sid, "idle")
    return out


def bench_approve(n1: Http, n2: Http, sid: str, rounds: int, per: int) -> dict[str, Any]:
    pairs = interleave(rounds, lambda: approve_batch(n1, n1, sid, per), lambda: approve_batch(n1, n2, sid, per))
    base_all: list[float] = sum((b for b, _ in pairs), [])
    cross_all: list[float] = sum((m for _, m in pairs), [])
    p99 = pct(cross_all, 99)
    out: dict[str, Any] = {
        "p50": show("cluster: approve p50", "via n2 / on n1 (its owner)",
                    [pct(m, 50) / pct(b, 50) for b, m in pairs],
                    f"({pct(cross_all, 50):.1f} ms vs {pct(base_all, 50):.1f} ms)"),
        "p99": show("cluster: approve p99", "via n2 / on n1 (its owner)",
                    [pct(m, 99) / pct(b, 99) for b, m in pairs],
                    f"({p99:.1f} ms vs {pct(base_all, 99):.1f} ms over {len(cross_all)} approvals each; "
                    f"target <= 50 ms: {'met' if p99 <= 50 else 'NOT met'})")}
    out.update({"ms": {"p50": pct(cross_all, 50), "p99": p99, "max": max(cross_all)},
                "owner_ms": {"p50": pct(base_all, 50), "p99": pct(base_all, 99), "max": max(base_all)},
                "samples": len(cross_all), "target_p99_ms": 50, "met": p99 <= 50})
    return out


# ---- event delivery --------------------------------------------------------------------------------------------
class EventStreams:
    """/v1/events held on several nodes, read by one thread: for each frame of ``sid`` whose text starts with
    ``mark``, the receive time minus the event's own timestamp (ms, one clock: every process is on this machine)."""

    def __init__(self, nodes: dict[str, Daemon], sid: str) -> None:
        self.sid = sid
        self.lat: dict[str, dict[str, float]] = {name: {} for name in nodes}  # node -> marker -> ms
        self.socks: dict[socket.socket, tuple[str, list[bytes]]] = {}
        self.ready: set[str] = set()
        self.stop = False
        for name, d in nodes.items():
            s = socket.create_connection((d.host, d.port))
            s.sendall(b"GET /v1/events HTTP/1.0\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n")
            s.settimeout(0.1)
            self.socks[s] = (name, [b""])
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while len(self.ready) < len(nodes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {sorted(self.ready)} of the event streams connected")
            time.sleep(0.01)

    def _run(self) -> None:
        import selectors

        sel = selectors.DefaultSelector()
        for s in self.socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        needle = f'"sessionId":"{self.sid}"'.encode()
        while not self.stop:
            for key, _ in sel.select(0.1):
                conn = key.fileobj
                if not isinstance(conn, socket.socket):
                    continue
                try:
                    data = conn.recv(1 << 20)
                except BlockingIOError:
                    continue
                now = time.time() * 1000
                if not data:
                    sel.unregister(conn)
                    continue
                name, buf = self.socks[conn]
                *frames, buf[0] = (buf[0] + data).split(b"\n\n")
                for fr in frames:
                    if b'"connected"' in fr:
                        self.ready.add(name)
                    if needle not in fr:
                        continue
                    body = json.loads(fr.split(b"data: ", 1)[1])
                    text = str((body.get("data") or {}).get("text") or "")
                    if text.startswith("mk"):
                        self.lat[name][text] = now - body["timestamp"]

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        for s in self.socks:
            s.close()


def events_round(n1: Http, streams: EventStreams, sid: str, r: int, chunks: int, gap_ms: int) -> dict[str, list[float]]:
    marks = [f"mk{r}-{i}" for i in range(chunks)]
    owner_before = {name: len(v) for name, v in streams.lat.items()}
    n1.ok("POST", f"/v1/sessions/{sid}/send", {"text": ";".join(f"say:{m};sleep:{gap_ms}" for m in marks)})
    deadline = time.monotonic() + 60
    while any(not all(m in got for m in marks) for got in streams.lat.values()):
        if time.monotonic() > deadline:
            missing = {name: [m for m in marks if m not in got] for name, got in streams.lat.items()}
            raise RuntimeError(f"chunks never arrived: {missing} (had {owner_before})")
        time.sleep(0.01)
    wait_status(n1, sid, "idle")
    return {name: [got[m] for m in marks] for name, got in streams.lat.items()}


def bench_events(nodes: dict[str, Daemon], n1: Http, sid: str, rounds: int, chunks: int, gap_ms: int
                 ) -> dict[str, Any]:
    streams = EventStreams({"n1": nodes["n1"], "n3": nodes["n3"]}, sid)
    try:
        per_round = [events_round(n1, streams, sid, r, chunks, gap_ms) for r in range(rounds)]
    finally:
        streams.close()
    local = sum((x["n1"] for x in per_round), [])
    remote = sum((x["n3"] for x in per_round), [])
    out: dict[str, Any] = {
        "p99": show("cluster: say: chunk -> SSE p99", "stream on n3 / on n1",
                    [pct(x["n3"], 99) / max(1.0, pct(x["n1"], 99)) for x in per_round],
                    f"({pct(remote, 99):.0f} ms vs {pct(local, 99):.0f} ms; p50 {pct(remote, 50):.0f} vs "
                    f"{pct(local, 50):.0f} ms; {len(remote)} chunks at {1000 / (gap_ms + 1):.0f}/s)")}
    out.update({"ms": {"p50": pct(remote, 50), "p99": pct(remote, 99), "max": max(remote)},
                "owner_ms": {"p50": pct(local, 50), "p99": pct(local, 99), "max": max(local)},
                "samples": len(remote)})
    return out


# ---- failover --------------------------------------------------------------------------------------------------
def failover_round(c: Cluster, victim: str, watch: str, n: int) -> dict[str, Any]:
    c.start(victim)
    work = c.work / victim
    sids = c.create({victim: n}, work)[victim]
    h = Http(c.nodes[watch])
    lost = f"/v1/sessions?limit=100&workDir={work}"
    try:
        def listed() -> dict[str, dict[str, Any]]:
            return {s["id"]: s for s in h.ok("GET", lost)[0]["sessions"]}
        deadline = time.monotonic() + 30
        while not (seen := listed()).keys() >= set(sids) or any(seen[s]["status"] != "idle" for s in sids):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{watch} never saw {victim}'s {n} sessions idle")
            time.sleep(0.05)
        agents = {sid: procs_with_env(f"AEGIS_SESSION_ID={sid}".encode()) for sid in sids}
        killed = time.monotonic()
        c.kill(victim)
        adopted: dict[str, float] = {}
        deadline = killed + c.lease_ms / 1000 * 3 + 60
        while True:
            now = time.monotonic()
            seen = listed()
            for sid in sids:
                if sid not in adopted and seen[sid]["node"] != victim:
                    adopted[sid] = now - killed
            if len(adopted) == n and all(seen[s]["status"] == "idle" for s in sids):
                break
            if now > deadline:
                stuck = {s: (seen[s]["node"], seen[s]["status"]) for s in sids if seen[s]["status"] != "idle"}
                raise RuntimeError(f"failover of {victim} unfinished after {now - killed:.0f} s: {stuck}")
            time.sleep(0.02)
        elapsed = now - killed
        by: dict[str, int] = {}
        for sid in sids:
            by[seen[sid]["node"]] = by.get(seen[sid]["node"], 0) + 1
        after = {sid: procs_with_env(f"AEGIS_SESSION_ID={sid}".encode()) for sid in sids}
        twice = {sid: pids for sid, pids in after.items() if len(pids) != 1}
        old_alive = [p for ps in agents.values() for p in ps if any(p in q for q in after.values())]
    finally:
        h.close()
    lease = c.lease_ms / 1000
    return {"lease_s": lease, "sessions": n, "seconds": elapsed, "over_lease_s": elapsed - lease,
            "first_adopted_s": min(adopted.values()), "last_adopted_s": max(adopted.values()), "adopted_by": by,
            "waves": waves(sorted(adopted.values())),
            "not_one_agent": twice, "old_agents_still_running": old_alive,
            "met": elapsed <= c.lease_ms / 1000 + 5}


def waves(times: list[float], gap: float = 0.3) -> list[tuple[float, int]]:
    """Adoption times grouped where they bunch: [(first time of the group, how many)]."""
    out: list[tuple[float, int]] = []
    for prev, t in zip([float("-inf"), *times], times):
        if t - prev < gap:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((round(t, 1), 1))
    return out


def bench_failover(base: Path, pg: str, lease_ms: int, rounds: int, n: int) -> dict[str, Any]:
    c = Cluster(base, pg, lease_ms)
    try:
        c.start("a", "b")
        out = []
        for r in range(rounds):
            res = failover_round(c, f"v{r + 1}", "a", n)
            out.append(res)
            moved = ", ".join(f"{t:.1f} s ({k})" for t, k in res["waves"])
            print(f"    lease {res['lease_s']:g} s: {n} sessions idle elsewhere {res['seconds']:.1f} s after kill -9 "
                  f"(moved at {moved}; to {res['adopted_by']}; one agent each: "
                  f"{'yes' if not res['not_one_agent'] else res['not_one_agent']})", flush=True)
    finally:
        c.close()
    secs = [x["seconds"] for x in out]
    limit = lease_ms / 1000 + 5
    s = spread(secs)
    print(f"  {'cluster: failover, lease ' + format(lease_ms / 1000, 'g') + ' s':<34} {'kill -9 -> all idle, s':<28} "
          f"min {s['min']:.3g}  median {s['median']:.3g}  max {s['max']:.3g}  (target <= {limit:g} s: "
          f"{'met' if max(secs) <= limit else 'NOT met'})", flush=True)
    return {"lease_s": lease_ms / 1000, "seconds": s, "target_s": limit, "met": max(secs) <= limit, "rounds": out}


# ---- the section -----------------------------------------------------------------------------------------------
def bench_cluster(tmp: Path, rounds: int, quick: bool, per_node: int = 100) -> dict[str, Any]:
    pg, source = pg_url()
    if pg is None:
        print(f"  cluster: skipped ({source})", flush=True)
        return {"skipped": source}
    t_start = time.monotonic()
    out: dict[str, Any] = {"postgres": source, "per_node": per_node, "nodes": 3}
    c = Cluster(tmp / "c", pg, 15000)
    single = Cluster(tmp / "s", pg, 15000)
    hs: list[Http] = []
    try:
        with ThreadPoolExecutor(2) as pool:
            a = pool.submit(c.start, "n1", "n2", "n3")
            b = pool.submit(single.start, "s1")
            a.result()
            b.result()
        t0 = time.monotonic()
        with ThreadPoolExecutor(2) as pool:
            made_f = pool.submit(c.create, {"n1": per_node, "n2": per_node, "n3": per_node})
            single_f = pool.submit(single.create, {"s1": per_node * 3})
            made = made_f.result()
            single_f.result()
        out["create_s"] = time.monotonic() - t0
        print(f"    {per_node * 3} sessions on 3 nodes and {per_node * 3} on a single node created in "
              f"{out['create_s']:.0f} s", flush=True)
        nodes = {name: Http(c.nodes[name]) for name in ("n1", "n2", "n3")}
        s1 = Http(single.nodes["s1"])
        hs = [*nodes.values(), s1]
        deadline = time.monotonic() + 30
        for name, h in [*nodes.items(), ("s1", s1)]:  # every node lists every session
            while (total := h.ok("GET", LIST)[0]["pagination"]["total"]) != per_node * 3:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} lists {total} sessions, not {per_node * 3}")
                time.sleep(0.1)
        out["list"] = bench_list(s1, nodes, rounds, 10 if quick else 20)
        sid = made["n1"][0]
        out["approve"] = bench_approve(nodes["n1"], nodes["n2"], sid, rounds, 5 if quick else 15)
        out["events"] = bench_events(c.nodes, nodes["n1"], made["n1"][1], rounds, 20 if quick else 40, 19)
    finally:
        for h in hs:
            h.close()
        single.close()
        c.close()
    out["failover_15s"] = bench_failover(tmp / "f15", pg, 15000, 1, 20)
    out["failover_3s"] = bench_failover(tmp / "f3", pg, 3000, 1 if quick else 3, 20)
    out["seconds"] = time.monotonic() - t_start
    print(f"    (cluster section: {out['seconds']:.0f} s)", flush=True)
    return out
