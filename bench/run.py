"""`make bench`: measures the daemon with the fake ACP agent and writes bench/results/latest.json.

Each figure is measured against a real aegisd subprocess (file store, real sockets, real agent processes):
  overhead   create->idle through aegisd, minus a bare spawn+initialize+session/new of the same agent
  scale      N concurrent sessions: daemon RSS per session, session.list latency (p50/p99)
  throughput agent updates per second through the daemon (one turn of `stream:N`)
  ops        the same read operation (session.get) per second over the socket and over HTTP
  cli        `aegisctl list` start-to-exit time
  stores     per session store (file; postgres / redis when AEGIS_TEST_PG_URL / AEGIS_TEST_REDIS_URL are set):
             create->idle, one short turn send->turn end, and update throughput
Run `python bench/run.py --quick` for a fast smoke run."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from aegisctl.client import Client  # noqa: E402

FAKE = [sys.executable, str(ROOT / "tests" / "fake_agent.py")]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


class Daemon:
    def __init__(self, tmp: Path, extra_env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.sock = tmp / "s" / "aegisd.sock"
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp), "AEGIS_STATE_DIR": str(tmp / "state"),
               "AEGIS_SOCKET": str(self.sock), "AEGIS_PORT": "0", "AEGIS_ALLOWED_WORK_DIRS": str(tmp),
               "AEGIS_IP_RATE_LIMIT": "0",  # measure the server, not the per-IP limit's 429s
               "AEGIS_AGENT_COMMAND": " ".join(FAKE), "AEGIS_LOG_LEVEL": "warning",
               "AEGIS_MAX_SESSIONS": "10000", "FAKE_ACP_STATE_DIR": str(tmp / "fake"),
               "AEGIS_SSE_MAX_PER_IP": "1000", "AEGIS_SSE_MAX_CONNECTIONS": "1000"}
        env.update(extra_env or {})
        self.env = env
        self.log = open(tmp / "aegisd.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "aegisd"], env=env, cwd=str(tmp), stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.hello = Client(socket_path=self.sock).call("hello")
                break
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError((tmp / "aegisd.log").read_text()) from None
                time.sleep(0.05)
        self.url = self.hello["httpUrl"]

    def client(self) -> Client:
        return Client(socket_path=self.sock, timeout=300)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def bare_agent_start(workdir: Path) -> float:
    """spawn + initialize + session/new of the fake agent, no daemon."""
    t0 = time.perf_counter()
    p = subprocess.Popen(FAKE, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(workdir),
                         env={"PATH": os.environ["PATH"], "FAKE_ACP_STATE_DIR": str(workdir / ".fake")})
    assert p.stdin and p.stdout
    p.stdin.write(json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                              "params": {"protocolVersion": 1}}).encode() + b"\n")
    p.stdin.flush()
    p.stdout.readline()
    p.stdin.write(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "session/new",
                              "params": {"cwd": str(workdir), "mcpServers": []}}).encode() + b"\n")
    p.stdin.flush()
    while b'"id": 1' not in (line := p.stdout.readline()) and b'"id":1' not in line:
        pass
    elapsed = time.perf_counter() - t0
    p.stdin.close()
    p.wait()
    return elapsed


def bench_overhead(d: Daemon, n: int) -> dict[str, Any]:
    work = d.tmp / "ov"
    work.mkdir()
    bare = [bare_agent_start(work) for _ in range(n)]
    c = d.client()
    via = []
    for _ in range(n):
        t0 = time.perf_counter()
        s = c.call("session.create", workDir=str(work), reuse=False)
        via.append(time.perf_counter() - t0)
        assert s["status"] == "idle", s
        c.call("session.kill", id=s["id"])
    return {"n": n, "bare_ms_median": statistics.median(bare) * 1000,
            "daemon_ms_median": statistics.median(via) * 1000,
            "overhead_ms_median": (statistics.median(via) - statistics.median(bare)) * 1000}


def bench_scale(d: Daemon, n: int) -> dict[str, Any]:
    work = d.tmp / "scale"
    work.mkdir()
    base = rss_kib(d.proc.pid)
    t0 = time.perf_counter()
    errors: list[str] = []

    def create(k: int) -> None:
        try:
            Client(socket_path=d.sock, timeout=300).call("session.create", workDir=str(work), reuse=False,
                                                         name=f"s{k}")
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))
    threads = [threading.Thread(target=create, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    created_s = time.perf_counter() - t0
    c = d.client()
    live = c.call("session.list", status="idle", limit=1)["pagination"]["total"]
    after = rss_kib(d.proc.pid)
    lat = []
    for _ in range(200):
        t1 = time.perf_counter()
        c.call("session.list", limit=100)
        lat.append((time.perf_counter() - t1) * 1000)
    return {"n": n, "idle_sessions": live, "errors": errors[:3], "create_all_s": created_s,
            "daemon_rss_base_mib": base / 1024, "daemon_rss_after_mib": after / 1024,
            "daemon_rss_per_session_kib": (after - base) / max(1, n),
            "list100_ms_p50": pct(lat, 50), "list100_ms_p99": pct(lat, 99)}


def bench_throughput(d: Daemon, updates: int) -> dict[str, Any]:
    work = d.tmp / "tp"
    work.mkdir()
    c = d.client()
    s = c.call("session.create", workDir=str(work), reuse=False)
    t0 = time.perf_counter()
    c.call("session.send", id=s["id"], text=f"stream:{updates}")
    for ev in c.stream("session.follow", id=s["id"], untilIdle=True):
        if ev["event"] == "turn":
            break
    elapsed = time.perf_counter() - t0
    c.call("session.kill", id=s["id"])
    return {"updates": updates, "seconds": elapsed, "updates_per_s": updates / elapsed}


def bench_ops(d: Daemon, n: int) -> dict[str, Any]:
    import httpx

    work = d.tmp / "ops"
    work.mkdir()
    c = d.client()
    sid = c.call("session.create", workDir=str(work), reuse=False)["id"]
    t0 = time.perf_counter()
    for _ in range(n):
        c.call("session.get", id=sid)
    sock_rate = n / (time.perf_counter() - t0)
    with httpx.Client(base_url=d.url) as h:
        h.get(f"/v1/sessions/{sid}")
        t0 = time.perf_counter()
        for _ in range(n):
            assert h.get(f"/v1/sessions/{sid}").status_code == 200
        http_rate = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(n):
            r = h.post("/v1/rpc", json={"id": 1, "op": "session.get", "params": {"id": sid}})
            assert r.status_code == 200
        rpc_rate = n / (time.perf_counter() - t0)
    return {"n": n, "socket_ops_per_s": sock_rate, "http_rest_ops_per_s": http_rate,
            "http_rpc_ops_per_s": rpc_rate}


def bench_sse(d: Daemon, subscribers: int, updates: int) -> dict[str, Any]:
    """One busy session, N SSE subscribers on /v1/events: events delivered per second, delivery latency
    (receive time minus the event's publish timestamp; same clock)."""
    import httpx
    import trio

    work = d.tmp / f"sse-{updates}"
    work.mkdir()
    c = d.client()
    sid = c.call("session.create", workDir=str(work), reuse=False)["id"]
    latencies: list[float] = []
    received = [0] * subscribers
    overflows = [0]

    async def main() -> float:
        ready = trio.Semaphore(0)
        done = trio.Event()

        async def subscriber(i: int, client: httpx.AsyncClient) -> None:
            async with client.stream("GET", "/v1/events") as resp:
                ready.release()
                async for line in resp.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    ev = json.loads(line[6:])
                    if ev.get("event") == "overflow":
                        overflows[0] += 1
                    if "id" not in ev:
                        continue
                    received[i] += 1
                    latencies.append(time.time() * 1000 - ev["timestamp"])
                    if ev["event"] == "session_turn":
                        return

        limits = httpx.Limits(max_connections=subscribers + 10)
        async with httpx.AsyncClient(base_url=d.url, timeout=httpx.Timeout(60, read=None), limits=limits) as client:
            async with trio.open_nursery() as n:
                for i in range(subscribers):
                    n.start_soon(subscriber, i, client)
                for _ in range(subscribers):
                    await ready.acquire()
                t0 = time.perf_counter()
                await trio.to_thread.run_sync(lambda: c.call("session.send", id=sid, text=f"stream:{updates}"))
            elapsed = time.perf_counter() - t0
        done.set()
        return elapsed

    cpu0 = cpu_seconds(d.proc.pid)
    elapsed = trio.run(main)
    daemon_cpu = cpu_seconds(d.proc.pid) - cpu0
    total = sum(received)
    return {"subscribers": subscribers, "updates": updates, "seconds": elapsed,
            "events_delivered": total, "events_per_s": total / elapsed, "overflow_markers": overflows[0],
            "latency_ms_p50": pct(latencies, 50), "latency_ms_p99": pct(latencies, 99),
            "daemon_cpu_s": daemon_cpu, "daemon_cpu_us_per_frame": daemon_cpu / max(1, total) * 1e6}


def bench_cli(d: Daemon, n: int) -> dict[str, Any]:
    ag = shutil.which("aegisctl", path=str(Path(sys.executable).parent)) or "aegisctl"
    times = []
    env = {**os.environ, "AEGIS_SOCKET": str(d.sock), "AEGIS_STATE_DIR": str(d.tmp / "state")}
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([ag, "list"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - t0)
    return {"n": n, "aegisctl_list_ms_median": statistics.median(times) * 1000,
            "aegisctl_list_ms_min": min(times) * 1000}


def _turn(c: Client, sid: str, text: str) -> float:
    t0 = time.perf_counter()
    c.call("session.send", id=sid, text=text)
    for ev in c.stream("session.follow", id=sid, untilIdle=True):
        if ev["event"] == "turn":
            break
    return time.perf_counter() - t0


def bench_stores(n: int, updates: int) -> dict[str, Any]:
    import uuid

    kinds: dict[str, dict[str, str]] = {"file": {}}
    if os.environ.get("AEGIS_TEST_PG_URL"):
        kinds["postgres"] = {"AEGIS_SESSION_STORE": "postgres", "AEGIS_POSTGRES_URL": os.environ["AEGIS_TEST_PG_URL"],
                             "AEGIS_PG_TABLE": f"bench_{uuid.uuid4().hex[:8]}"}
    if os.environ.get("AEGIS_TEST_REDIS_URL"):
        kinds["redis"] = {"AEGIS_SESSION_STORE": "redis", "AEGIS_REDIS_URL": os.environ["AEGIS_TEST_REDIS_URL"],
                          "AEGIS_REDIS_KEY_PREFIX": f"bench_{uuid.uuid4().hex[:8]}"}
    out: dict[str, Any] = {}
    for kind, env in kinds.items():
        tmp = Path(tempfile.mkdtemp(prefix="agb-", dir="/tmp"))
        d = Daemon(tmp, env)
        try:
            work = tmp / "w"
            work.mkdir()
            c = d.client()
            creates, turns = [], []
            for _ in range(n):
                t0 = time.perf_counter()
                s = c.call("session.create", workDir=str(work), reuse=False)
                creates.append(time.perf_counter() - t0)
                turns.append(_turn(c, s["id"], "say:hello"))
                c.call("session.kill", id=s["id"])
            s = c.call("session.create", workDir=str(work), reuse=False)
            tp = _turn(c, s["id"], f"stream:{updates}")
            out[kind] = {"create_ms_median": statistics.median(creates) * 1000,
                         "turn_ms_median": statistics.median(turns) * 1000, "turn_ms_p90": pct(
                             [t * 1000 for t in turns], 90),
                         "updates": updates, "updates_per_s": updates / tp}
            print(kind, json.dumps(out[kind]), flush=True)
        finally:
            d.stop()
            shutil.rmtree(tmp, ignore_errors=True)
            if kind != "file":
                sys.path.insert(0, str(ROOT / "tests"))
                from conftest import drop_store  # type: ignore[import-not-found]

                drop_store(kind, env.get("AEGIS_PG_TABLE") or env["AEGIS_REDIS_KEY_PREFIX"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="overhead,scale,throughput,ops,sse,cli,stores")
    args = ap.parse_args()
    q = args.quick
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                               "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for name in args.only.split(","):
        if name == "stores":  # starts its own daemons, one per store
            results[name] = bench_stores(5 if q else 30, 2000 if q else 20000)
            continue
        tmp = Path(tempfile.mkdtemp(prefix="agb-", dir="/tmp"))
        d = Daemon(tmp)
        try:
            if name == "overhead":
                results[name] = bench_overhead(d, 5 if q else 20)
            elif name == "scale":
                results[name] = bench_scale(d, 20 if q else 200)
            elif name == "throughput":
                results[name] = bench_throughput(d, 2000 if q else 50000)
            elif name == "ops":
                results[name] = bench_ops(d, 200 if q else 3000)
            elif name == "sse":
                results[name] = bench_sse(d, 10 if q else 100, 200 if q else 1000)
                results["sse_light"] = bench_sse(d, 10 if q else 100, 20)
                print("sse_light", json.dumps(results["sse_light"], indent=1), flush=True)
            elif name == "cli":
                results[name] = bench_cli(d, 3 if q else 15)
            print(name, json.dumps(results[name], indent=1), flush=True)
        finally:
            d.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2))
    print(f"written {out / 'latest.json'}")


if __name__ == "__main__":
    main()
