"""`make bench`: every figure is a ratio against a baseline measured INTERLEAVED with it in the same run (the
machine is shared and noisy: absolute figures drift between runs, ratios much less). Each pair runs in
alternating order for several rounds and the min / median / max of the ratio is printed; raw results go to
bench/results/latest.json.

  socket      pipelined `session.get` on the control socket  vs  a raw trio echo server (bench/_baselines.py)
  http        GET /v1/sessions  vs  a bare quart-trio app on hypercorn serving the same bytes;
              also `session.get` over the socket, POST /v1/rpc and GET /v1/sessions/{id} (sequential)
  sse         100 subscribers of one session at ~200 events/s  vs  1 subscriber: delivery p99, daemon CPU,
              marginal CPU per subscriber per event; then the same pair again while a second session takes a
              short turn every 0.1 s: its turn end -> `idle` visible on its stream (the store's save between
              them) against the turn event's own delivery (CPU is read from the rounds without those turns)
  sse_many    1,000 subscribers across 100 sessions (10 each, 2 events/s per session)  vs  10 subscribers of one
  overhead    `session.create` -> idle through aegisd  vs  a bare spawn + initialize + session/new of the agent
  throughput  one turn of N agent updates through aegisd  vs  the bare agent writing them to a pipe
  cli         `aegisctl list`  vs  the venv's `python -c pass`
  instructions  GET /v1/sessions counted in instructions by valgrind's callgrind (bench/_instructions.py): ours vs
              the bare quart-trio app, and vs the bare app sending our six extra headers. Deterministic, so not
              interleaved; about two minutes. Not in the default run (--only instructions)
  real        the real claude-agent-acp offline against a mock of the Anthropic API (bench/_real.py): create -> idle
              and create + prompt -> reply through aegisd  vs  a bare ACP client. Skipped without `make agents`
  cluster     3 nodes on one PostgreSQL schema (bench/_cluster.py): GET /v1/sessions through each  vs  a single-node
              daemon with as many sessions; approve through another node  vs  on the owner; an event's delivery
              to an SSE stream on another node  vs  on the owner; failover after kill -9 (against the lease).
              Skipped without PostgreSQL (AEGIS_BENCH_PG_URL, AEGIS_TEST_PG_URL, or pg_isready on 127.0.0.1)

The agent is the fake ACP agent (tests/fake_agent.py), which answers at once: the figures are the daemon's own
cost. Events arrive at a steady rate (the agent sleeps between updates), not in bursts that real agents do not
produce. `python bench/run.py --quick` is a short run; `--only sse,socket` picks sections."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from aegisctl.client import Client  # noqa: E402

FAKE = [sys.executable, str(ROOT / "tests" / "fake_agent.py")]
BASELINES = [sys.executable, str(ROOT / "bench" / "_baselines.py")]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def interleave(rounds: int, baseline: Callable[[], Any], measured: Callable[[], Any]) -> list[tuple[Any, Any]]:
    """Run baseline and measured alternately (the order swapped every round), ``rounds`` pairs."""
    out = []
    for r in range(rounds):
        if r % 2 == 0:
            b = baseline()
            m = measured()
        else:
            m = measured()
            b = baseline()
        out.append((b, m))
    return out


def show(name: str, what: str, ratios: list[float], extra: str = "") -> dict[str, Any]:
    s = spread(ratios)
    print(f"  {name:<34} {what:<28} min {s['min']:.3g}  median {s['median']:.3g}  max {s['max']:.3g}  {extra}",
          flush=True)
    return {"ratio": s, "what": what}


class Daemon:
    def __init__(self, tmp: Path, extra_env: dict[str, str] | None = None, wrapper: list[str] | None = None,
                 start_s: float = 60) -> None:
        self.tmp = tmp
        self.sock = tmp / "s" / "aegisd.sock"
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp), "AEGIS_STATE_DIR": str(tmp / "state"),
               "AEGIS_SOCKET": str(self.sock), "AEGIS_PORT": "0", "AEGIS_ALLOWED_WORK_DIRS": str(tmp),
               "AEGIS_IP_RATE_LIMIT": "0",  # measure the server, not the per-IP limit's 429s
               "AEGIS_AGENT_COMMAND": " ".join(FAKE), "AEGIS_LOG_LEVEL": "warning",
               "AEGIS_MAX_SESSIONS": "10000", "FAKE_ACP_STATE_DIR": str(tmp / "fake"),
               "AEGIS_SSE_MAX_PER_IP": "5000", "AEGIS_SSE_MAX_CONNECTIONS": "5000"}
        env.update(extra_env or {})
        self.log = open(tmp / "aegisd.log", "wb")
        self.proc = subprocess.Popen([*(wrapper or []), sys.executable, "-m", "aegisd"], env=env, cwd=str(tmp),
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + start_s
        while True:
            try:
                self.hello = Client(socket_path=self.sock).call("hello")
                break
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError((tmp / "aegisd.log").read_text()) from None
                time.sleep(0.05)
        self.url = self.hello["httpUrl"]
        host, port = self.url.split("//", 1)[1].rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.work = tmp / "w"
        self.work.mkdir(exist_ok=True)

    def client(self) -> Client:
        return Client(socket_path=self.sock, timeout=300)

    def session(self) -> str:
        return str(self.client().call("session.create", workDir=str(self.work), reuse=False)["id"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


class Started:
    """A baseline process that prints one line when ready."""

    def __init__(self, args: list[str], wrapper: list[str] | None = None) -> None:
        self.proc = subprocess.Popen([*(wrapper or []), *BASELINES, *args], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout
        self.line = self.proc.stdout.readline().strip()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# ---- the control socket ------------------------------------------------------------------------------------
def pipelined(path: str, frame: bytes, seconds: float, window: int = 32) -> float:
    """Requests per second with ``window`` requests in flight, sent in one write, their answers read back."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    batch = frame * window
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    try:
        while True:
            s.sendall(batch)
            need = window
            while need > 0:
                data = s.recv(1 << 20)
                assert data, "closed"
                need -= data.count(b"\n")
            n += window
            if time.perf_counter() >= end:
                break
        return n / (time.perf_counter() - t0)
    finally:
        s.close()


def bench_socket(d: Daemon, rounds: int, seconds: float) -> dict[str, Any]:
    sid = d.session()
    frame = json.dumps({"id": 1, "op": "session.get", "params": {"id": sid}}).encode() + b"\n"
    echo_path = str(d.tmp / "echo.sock")
    echo = Started(["echo", echo_path])

    def measured(pid: int, path: str) -> tuple[float, float]:
        cpu0 = cpu_seconds(pid)
        t0 = time.perf_counter()
        rate = pipelined(path, frame, seconds)
        ops = rate * (time.perf_counter() - t0)
        return rate, (cpu_seconds(pid) - cpu0) / ops * 1e6
    try:
        pairs = interleave(rounds, lambda: measured(echo.proc.pid, echo_path),
                           lambda: measured(d.proc.pid, str(d.sock)))
    finally:
        echo.stop()
    ours = [m[0] for _, m in pairs]
    out = show("socket: pipelined session.get", "ours / raw trio echo", [m[0] / b[0] for b, m in pairs],
               f"(ours {statistics.median(ours):,.0f} ops/s, echo {statistics.median(b[0] for b, _ in pairs):,.0f};"
               f" server CPU per op {statistics.median(m[1] for _, m in pairs):.0f} µs vs "
               f"{statistics.median(b[1] for b, _ in pairs):.0f} µs)")
    out.update({"ops_per_s": spread(ours), "echo_ops_per_s": spread([b[0] for b, _ in pairs]),
                "cpu_us_per_op": spread([m[1] for _, m in pairs]),
                "echo_cpu_us_per_op": spread([b[1] for b, _ in pairs])})
    return out


# ---- HTTP ----------------------------------------------------------------------------------------------------
def sequential_http(host: str, port: int, method: str, path: str, seconds: float, body: bytes | None = None) -> float:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        r.read()
        assert r.status == 200, r.status
        n += 1
        if r.getheader("connection", "").lower() == "close":
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.close()
    return n / (time.perf_counter() - t0)


def with_cpu(pid: int, run: Callable[[], float]) -> tuple[float, float]:
    """``run()``'s rate (per second), and the CPU process ``pid`` spent per operation meanwhile (µs)."""
    c0, t0 = cpu_seconds(pid), time.perf_counter()
    rate = run()
    ops = rate * (time.perf_counter() - t0)
    return rate, (cpu_seconds(pid) - c0) / max(1.0, ops) * 1e6


def sequential_socket(path: str, frame: bytes, seconds: float) -> float:
    return pipelined(path, frame, seconds, window=1)


def bench_http(d: Daemon, rounds: int, seconds: float) -> dict[str, Any]:
    sid = d.session()
    conn = http.client.HTTPConnection(d.host, d.port)
    conn.request("GET", "/v1/sessions")
    size = len(conn.getresponse().read())
    conn.close()
    bare = Started(["quart", str(size)])
    bhost, bport = bare.line.split("//", 1)[1].rsplit(":", 1)
    try:
        timed = interleave(rounds, lambda: with_cpu(bare.proc.pid, lambda: sequential_http(
                               bhost, int(bport), "GET", "/v1/sessions", seconds)),
                           lambda: with_cpu(d.proc.pid, lambda: sequential_http(
                               d.host, d.port, "GET", "/v1/sessions", seconds)))
    finally:
        bare.stop()
    pairs = [(b[0], m[0]) for b, m in timed]
    ours = [m for _, m in pairs]
    out = show("http: GET /v1/sessions", "ours / bare quart-trio", [m / b for b, m in pairs],
               f"(ours {statistics.median(ours):,.0f} req/s, bare {statistics.median(b for b, _ in pairs):,.0f})")
    # the server's CPU per request, which the scheduling of the client and of other work moves far less than the
    # clock: the bare app's over ours (a ratio on the same scale as the one above)
    cpu = show("http: GET /v1/sessions", "server CPU, bare / ours", [b[1] / m[1] for b, m in timed],
               f"(ours {statistics.median(m[1] for _, m in timed):,.0f} µs per request, bare "
               f"{statistics.median(b[1] for b, _ in timed):,.0f})")
    out.update({"ops_per_s": spread(ours), "bare_ops_per_s": spread([b for b, _ in pairs]), "cpu": cpu,
                "cpu_us_per_req": spread([m[1] for _, m in timed]),
                "bare_cpu_us_per_req": spread([b[1] for b, _ in timed])})
    # the same read on each path, against the socket in the same rounds
    frame = json.dumps({"id": 1, "op": "session.get", "params": {"id": sid}}).encode()
    paths = {"rpc": lambda: sequential_http(d.host, d.port, "POST", "/v1/rpc", seconds, frame),
             "rest": lambda: sequential_http(d.host, d.port, "GET", f"/v1/sessions/{sid}", seconds)}
    for name, fn in paths.items():
        pairs = interleave(rounds, lambda: sequential_socket(str(d.sock), frame + b"\n", seconds), fn)
        out[f"session_get_{name}"] = show(f"http: session.get via {name}", "HTTP / socket (sequential)",
                                          [m / b for b, m in pairs],
                                          f"(HTTP {statistics.median(m for _, m in pairs):,.0f} ops/s, socket "
                                          f"{statistics.median(b for b, _ in pairs):,.0f})")
    return out


# ---- SSE -----------------------------------------------------------------------------------------------------
_TS = re.compile(rb'"timestamp":(\d+)')
_EV = re.compile(rb'"event":"([a-z_.]+)"')


class SseClients:
    """``n`` SSE streams read by one thread with selectors (cheap: the client shares the cores). Records, per
    frame with an id, receive time minus the event's publish timestamp (one clock); HTTP/1.0, so no chunking."""

    def __init__(self, d: Daemon, paths: list[str]) -> None:
        self.sel = selectors.DefaultSelector()
        self.latencies: list[float] = []
        self.frames = 0
        self.idle_visible: list[float] = []  # `idle` status received minus the preceding `turn` event's stamp
        self.turn_delivery: list[float] = []
        self.turns_seen = 0
        self.connected = 0
        self.stop = False
        self.socks = []
        for p in paths:
            s = socket.create_connection((d.host, d.port))
            s.sendall(f"GET {p} HTTP/1.0\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n".encode())
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ, {"buf": b"", "head": True, "turn_ts": None})
            self.socks.append(s)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while self.connected < len(paths):
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.connected} of {len(paths)} SSE streams connected")
            time.sleep(0.01)

    def _run(self) -> None:
        while not self.stop:
            for key, _ in self.sel.select(0.1):
                st = key.data
                try:
                    data = key.fileobj.recv(1 << 20)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                if not data:
                    self.sel.unregister(key.fileobj)
                    continue
                now = time.time() * 1000
                buf = st["buf"] + data
                if st["head"]:
                    if b"\r\n\r\n" not in buf:
                        st["buf"] = buf
                        continue
                    buf = buf.split(b"\r\n\r\n", 1)[1]
                    st["head"] = False
                *frames, st["buf"] = buf.split(b"\n\n")
                for fr in frames:
                    if not fr.startswith(b"id:"):
                        if b'"connected"' in fr:
                            self.connected += 1
                        continue
                    m = _TS.search(fr)
                    if m is None:
                        continue
                    ts = int(m.group(1))
                    self.frames += 1
                    self.latencies.append(now - ts)
                    ev = _EV.search(fr)
                    name = ev.group(1) if ev else b""
                    if name in (b"turn", b"session_turn"):
                        st["turn_ts"] = ts
                        self.turns_seen += 1
                        self.turn_delivery.append(now - ts)
                    elif name in (b"status", b"session_status_change") and b'"idle"' in fr \
                            and st["turn_ts"] is not None:
                        self.idle_visible.append(now - st["turn_ts"])
                        st["turn_ts"] = None

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        for s in self.socks:
            s.close()


class SseWatcher:
    """One SSE stream read in a process of its own (``run.py --sse-watch``), so that the threads reading the
    loaded streams, which share this process's GIL, do not delay it: its figures are the daemon's."""

    def __init__(self, d: Daemon, path: str) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--sse-watch", d.host, str(d.port), path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "connected":
            raise RuntimeError("the SSE watcher did not connect")

    def close(self) -> dict[str, list[float]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        got: dict[str, list[float]] = json.loads(self.proc.stdout.read())
        self.proc.wait(30)
        return got


def _sse_watch(host: str, port: int, path: str) -> None:
    class At:
        pass
    d = At()
    d.host, d.port = host, port  # type: ignore[attr-defined]
    c = SseClients(d, [path])  # type: ignore[arg-type]
    print("connected", flush=True)
    sys.stdin.read()
    c.close()
    print(json.dumps({"idle_visible": c.idle_visible, "turn_delivery": c.turn_delivery}), flush=True)


def paced(events: int, per_s: float) -> str:
    """A prompt for the fake agent: ``events`` updates at about ``per_s`` a second (it sleeps between them)."""
    gap_ms = max(1, int(1000 / per_s) - 1)  # the agent's own write takes about a millisecond
    return ";".join([f"stream:1;sleep:{gap_ms}"] * events)


def _turn_and_wait(d: Daemon, sid: str, text: str, sse: SseClients, turns: int) -> float:
    t0 = time.perf_counter()
    d.client().call("session.send", id=sid, text=text)
    deadline = time.monotonic() + 300
    while sse.turns_seen < turns:
        if time.monotonic() > deadline:
            raise RuntimeError("the turn never ended on the streams")
        time.sleep(0.005)
    return time.perf_counter() - t0


def sse_round(d: Daemon, sid: str, probe: str | None, n: int, events: int, rate: float) -> dict[str, Any]:
    """One turn of ``events`` updates at ``rate`` to ``n`` subscribers of ``sid``: delivery latency and the
    daemon's CPU. With ``probe``, a second session takes short turns meanwhile (turn end -> `idle` visible on its
    stream, the store's save between); its own CPU is then part of the figure, so CPU is read from rounds without."""
    loaded = SseClients(d, [f"/v1/sessions/{sid}/events"] * n)
    watch = SseWatcher(d, f"/v1/sessions/{probe}/events") if probe else None
    stop = threading.Event()

    def prober() -> None:
        c = d.client()
        while not stop.is_set():
            c.call("session.send", id=probe, text="say:hi")
            time.sleep(0.1)

    try:
        cpu0 = cpu_seconds(d.proc.pid)
        t = threading.Thread(target=prober)
        if probe:
            t.start()
        elapsed = _turn_and_wait(d, sid, paced(events, rate), loaded, n)
        stop.set()
        if probe:
            t.join()
        cpu = cpu_seconds(d.proc.pid) - cpu0
        time.sleep(0.1)
    finally:
        loaded.close()
        seen = watch.close() if watch else {}
    out = {"subscribers": n, "events": events, "seconds": elapsed, "frames": loaded.frames,
           "rate_per_s": events / elapsed, "p50_ms": pct(loaded.latencies, 50), "p99_ms": pct(loaded.latencies, 99),
           "cpu_s": cpu, "core_share": cpu / elapsed}
    if watch:
        out.update({"idle_visible_p99_ms": pct(seen["idle_visible"], 99),
                    "idle_visible_p50_ms": pct(seen["idle_visible"], 50),
                    "turn_delivery_p99_ms": pct(seen["turn_delivery"], 99), "probes": len(seen["idle_visible"])})
    return out


def bench_sse(d: Daemon, rounds: int, n: int, events: int, rate: float) -> dict[str, Any]:
    sid, probe = d.session(), d.session()
    pairs = interleave(rounds, lambda: sse_round(d, sid, None, 1, events, rate),
                       lambda: sse_round(d, sid, None, n, events, rate))
    for b, m in pairs:
        print(f"    1 sub: p99 {b['p99_ms']:.1f} ms cpu {b['core_share']:.0%} | {n} subs: p99 {m['p99_ms']:.1f} ms "
              f"cpu {m['core_share']:.0%} ({m['rate_per_s']:.0f} ev/s)", flush=True)
    marginal = [(m["cpu_s"] - b["cpu_s"]) / ((n - 1) * events) * 1e6 for b, m in pairs]
    probed = interleave(rounds, lambda: sse_round(d, sid, probe, 1, events, rate),
                        lambda: sse_round(d, sid, probe, n, events, rate))
    for b, m in probed:
        print(f"    idle visible p99 {b['idle_visible_p99_ms']:.1f} ms (1 sub) / {m['idle_visible_p99_ms']:.1f} ms "
              f"({n} subs; that round's CPU {m['core_share']:.0%} with the prober)", flush=True)
    out = {"rounds": pairs, "probed_rounds": probed,
           "p99": show(f"sse: {n} subscribers, 1 session", f"p99 {n} subs / 1 sub", [m["p99_ms"] / max(1.0, b["p99_ms"])
                                                                                     for b, m in pairs],
                       f"(p99 {statistics.median(m['p99_ms'] for _, m in pairs):.1f} ms vs "
                       f"{statistics.median(b['p99_ms'] for b, _ in pairs):.1f} ms)"),
           "cpu": show(f"sse: {n} subscribers, 1 session", f"CPU {n} subs / 1 sub", [m["cpu_s"] / b["cpu_s"]
                                                                                     for b, m in pairs],
                       f"({statistics.median(m['core_share'] for _, m in pairs):.0%} of a core vs "
                       f"{statistics.median(b['core_share'] for b, _ in pairs):.0%}; max "
                       f"{max(m['core_share'] for _, m in pairs):.0%})"),
           "marginal_us": spread(marginal),
           "idle": show("state: turn end -> idle on SSE", f"loaded ({n} subs) / 1 sub",
                        [m["idle_visible_p99_ms"] / max(1.0, b["idle_visible_p99_ms"]) for b, m in probed],
                        f"(p99 {statistics.median(m['idle_visible_p99_ms'] for _, m in probed):.1f} ms loaded, max "
                        f"{max(m['idle_visible_p99_ms'] for _, m in probed):.1f}; "
                        f"{statistics.median(b['idle_visible_p99_ms'] for b, _ in probed):.1f} ms; the turn event "
                        f"itself {statistics.median(m['turn_delivery_p99_ms'] for _, m in probed):.1f} ms)")}
    s = out["marginal_us"]
    print(f"  {'sse: marginal CPU per subscriber':<34} {'per event, µs':<28} min {s['min']:.3g}  median "
          f"{s['median']:.3g}  max {s['max']:.3g}", flush=True)
    return out


def many_round(d: Daemon, sids: list[str], per: int, events: int, rate: float) -> dict[str, Any]:
    sse = SseClients(d, [f"/v1/sessions/{s}/events" for s in sids for _ in range(per)])
    try:
        t0 = time.perf_counter()
        c = d.client()
        for s in sids:  # spread over one period: agents that all wake at the same instant are not real traffic
            c.call("session.send", id=s, text=paced(events, rate))
            time.sleep(1 / rate / len(sids))
        deadline = time.monotonic() + 300
        while sse.turns_seen < len(sids) * per:
            if time.monotonic() > deadline:
                raise RuntimeError("turns never ended")
            time.sleep(0.01)
        elapsed = time.perf_counter() - t0
    finally:
        sse.close()
    return {"streams": len(sids) * per, "sessions": len(sids), "frames": sse.frames, "seconds": elapsed,
            "p50_ms": pct(sse.latencies, 50), "p99_ms": pct(sse.latencies, 99)}


def bench_sse_many(d: Daemon, rounds: int, sessions: int, per: int, events: int, rate: float) -> dict[str, Any]:
    sids = [d.session() for _ in range(sessions)]
    pairs = interleave(rounds, lambda: many_round(d, sids[:1], per, events, rate),
                       lambda: many_round(d, sids, per, events, rate))
    out = show(f"sse: {sessions * per} subs, {sessions} sessions", f"p99 / {per} subs of 1 session",
               [m["p99_ms"] / max(1.0, b["p99_ms"]) for b, m in pairs],
               f"(p99 {statistics.median(m['p99_ms'] for _, m in pairs):.1f} ms vs "
               f"{statistics.median(b['p99_ms'] for b, _ in pairs):.1f} ms)")
    out["rounds"] = pairs
    return out


# ---- create overhead, throughput, CLI -----------------------------------------------------------------------
def acp_request(p: subprocess.Popen[bytes], n: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """Send request ``n`` to the agent ``p`` and return its answer (notifications and the agent's own requests
    skipped), one request at a time."""
    assert p.stdin and p.stdout
    p.stdin.write(json.dumps({"jsonrpc": "2.0", "id": n, "method": method, "params": params}).encode() + b"\n")
    p.stdin.flush()
    while True:
        line = p.stdout.readline()
        if not line:
            raise RuntimeError(f"the agent exited during {method}")
        msg = json.loads(line)
        if msg.get("id") == n and "method" not in msg:
            return dict(msg)


class BareAgent:
    def __init__(self, workdir: Path) -> None:
        self.p = subprocess.Popen(FAKE, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(workdir),
                                  env={"PATH": os.environ["PATH"], "FAKE_ACP_STATE_DIR": str(workdir / ".fake")})
        self.n = 0
        self.workdir = workdir

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.n += 1
        return acp_request(self.p, self.n, method, params)

    def close(self) -> None:
        assert self.p.stdin
        self.p.stdin.close()
        self.p.wait()


def bare_start(workdir: Path) -> float:
    t0 = time.perf_counter()
    a = BareAgent(workdir)
    a.call("initialize", {"protocolVersion": 1})
    a.call("session/new", {"cwd": str(workdir), "mcpServers": []})
    elapsed = time.perf_counter() - t0
    a.close()
    return elapsed


def bench_overhead(d: Daemon, rounds: int) -> dict[str, Any]:
    c = d.client()

    def via() -> float:
        t0 = time.perf_counter()
        s = c.call("session.create", workDir=str(d.work), reuse=False)
        elapsed = time.perf_counter() - t0
        c.call("session.kill", id=s["id"])
        return elapsed
    pairs = interleave(rounds, lambda: bare_start(d.work), via)
    return show("create -> idle", "aegisd / bare agent start", [m / b for b, m in pairs],
                f"(aegisd {statistics.median(m for _, m in pairs) * 1000:.0f} ms, bare "
                f"{statistics.median(b for b, _ in pairs) * 1000:.0f} ms)")


def bench_throughput(d: Daemon, rounds: int, updates: int) -> dict[str, Any]:
    sid = d.session()
    c = d.client()

    def via() -> float:
        t0 = time.perf_counter()
        c.call("session.send", id=sid, text=f"stream:{updates}")
        for ev in c.stream("session.follow", id=sid, untilIdle=True):
            if ev["event"] == "turn":
                break
        return updates / (time.perf_counter() - t0)

    def bare() -> float:
        a = BareAgent(d.work)
        a.call("initialize", {"protocolVersion": 1})
        asid = a.call("session/new", {"cwd": str(d.work), "mcpServers": []})["result"]["sessionId"]
        t0 = time.perf_counter()
        a.call("session/prompt", {"sessionId": asid, "prompt": [{"type": "text", "text": f"stream:{updates}"}]})
        rate = updates / (time.perf_counter() - t0)
        a.close()
        return rate
    pairs = interleave(rounds, bare, via)
    return show("agent updates through a turn", "aegisd / bare agent pipe", [m / b for b, m in pairs],
                f"(aegisd {statistics.median(m for _, m in pairs):,.0f}/s, bare "
                f"{statistics.median(b for b, _ in pairs):,.0f}/s)")


def bench_cli(d: Daemon, rounds: int) -> dict[str, Any]:
    ag = shutil.which("aegisctl", path=str(Path(sys.executable).parent)) or "aegisctl"
    env = {**os.environ, "AEGIS_SOCKET": str(d.sock), "AEGIS_STATE_DIR": str(d.tmp / "state")}

    def timed(cmd: list[str]) -> float:
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        return time.perf_counter() - t0
    pairs = interleave(rounds, lambda: timed([sys.executable, "-c", "pass"]), lambda: timed([ag, "list"]))
    return show("ag list", "ag list / python -c pass", [m / b for b, m in pairs],
                f"(ag list {statistics.median(m for _, m in pairs) * 1000:.0f} ms, python "
                f"{statistics.median(b for b, _ in pairs) * 1000:.0f} ms)")


SECTIONS = ("socket", "http", "sse", "sse_many", "overhead", "throughput", "cli", "real", "cluster")


def _cluster(tmp: Path, q: bool, args: argparse.Namespace) -> Any:
    from _cluster import bench_cluster  # bench/_cluster.py (imports this file's helpers)

    return bench_cluster(tmp, 3 if q else 5, q, args.cluster_per_node)


def _instructions(tmp: Path, q: bool, args: argparse.Namespace) -> Any:
    from _instructions import bench_instructions  # bench/_instructions.py

    return bench_instructions(tmp, 100 if q else 300)


def _real_agent(tmp: Path, q: bool, args: argparse.Namespace) -> Any:
    from _real import bench_real  # bench/_real.py

    return bench_real(tmp, 3 if q else 7)


OWN_SETUP: dict[str, Callable[[Path, bool, argparse.Namespace], Any]] = {
    "cluster": _cluster, "instructions": _instructions, "real": _real_agent}


def main() -> None:
    if sys.argv[1:2] == ["--sse-watch"]:
        return _sse_watch(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=",".join(SECTIONS))  # `instructions` too, which is not in the default
    ap.add_argument("--cluster-per-node", type=int, default=100, help="fake-agent sessions per cluster node")
    args = ap.parse_args()
    q = args.quick
    rounds = 3 if q else 7
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                               "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quick": q}
    print(f"ratios over {rounds} interleaved rounds (min / median / max)", flush=True)
    for name in args.only.split(","):
        tmp = Path(tempfile.mkdtemp(prefix="agb-", dir="/tmp"))
        if name in OWN_SETUP:  # sections in a module of their own, which start what they measure themselves
            try:
                results[name] = OWN_SETUP[name](tmp, q, args)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            continue
        d = Daemon(tmp)
        try:
            if name == "socket":
                results[name] = bench_socket(d, rounds, 0.5 if q else 1.0)
            elif name == "http":
                results[name] = bench_http(d, rounds, 0.5 if q else 1.0)
            elif name == "sse":
                results[name] = bench_sse(d, rounds, 100, 200 if q else 600, 200)
            elif name == "sse_many":
                results[name] = bench_sse_many(d, rounds, 20 if q else 100, 10, 6 if q else 10, 2)
            elif name == "overhead":
                results[name] = bench_overhead(d, 5 if q else 15)
            elif name == "throughput":
                results[name] = bench_throughput(d, rounds, 2000 if q else 20000)
            elif name == "cli":
                results[name] = bench_cli(d, 5 if q else 15)
        finally:
            d.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"written {out / 'latest.json'}")


if __name__ == "__main__":
    main()
