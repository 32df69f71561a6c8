"""`python bench/run.py --only instructions`: what one `GET /v1/sessions` costs the server, counted in
instructions by valgrind's callgrind, which the machine's load does not change (the same count run after run,
where the clock moves twofold with the hour).

Each server runs under callgrind: our daemon (one session in its list), the bare quart-trio app of
bench/_baselines.py with a body of the same size, and that app again sending our six extra headers. Each gets
warm-up requests, then its counters are zeroed, ``n`` sequential requests are sent on one keep-alive connection
and the counters dumped; then zeroed again for as long as the requests took with no request at all, and that
idle cost (the daemon's timers) is subtracted. Needs valgrind (skipped without it)."""

from __future__ import annotations

import glob
import http.client
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from run import Daemon, Started

WARM_UP = 50


def _sequential(host: str, port: int, n: int) -> bytes:
    conn = http.client.HTTPConnection(host, port, timeout=300)
    body = b""
    for _ in range(n):
        conn.request("GET", "/v1/sessions")
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200, r.status
    conn.close()
    return body


def _total(out: str) -> int:
    """The instruction count of the newest dump of ``out``."""
    newest = max(glob.glob(out + "*"), key=os.path.getmtime)
    text = Path(newest).read_text()
    m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    assert m, newest
    return int(m.group(1))


def _per_request(pid: int, out: str, host: str, port: int, n: int) -> dict[str, float]:
    def control(*args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(pid)], check=True, stdout=subprocess.DEVNULL)

    _sequential(host, port, WARM_UP)
    control("-z")
    t0 = time.monotonic()
    _sequential(host, port, n)
    took = time.monotonic() - t0
    control("-d")
    busy = _total(out)
    control("-z")
    time.sleep(took)  # the same span with no request: what the server spends anyway
    control("-d")
    idle = _total(out)
    return {"per_request_M": (busy - idle) / n / 1e6, "idle_share_M": idle / n / 1e6}


def bench_instructions(tmp: Path, n: int) -> dict[str, Any]:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("  instructions: skipped (valgrind not installed)")
        return {"skipped": "valgrind not installed"}
    results: dict[str, Any] = {}

    def wrapper(name: str) -> tuple[list[str], str]:
        out = str(tmp / f"callgrind.{name}")
        return ["valgrind", "-q", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no"], out

    vg, out = wrapper("ours")
    (tmp / "ours").mkdir()
    d = Daemon(tmp / "ours", wrapper=vg, start_s=600)
    try:
        d.session()
        size = len(_sequential(d.host, d.port, 1))
        results["ours"] = _per_request(d.proc.pid, out, d.host, d.port, n)
    finally:
        d.proc.kill()  # its orderly stop under valgrind takes long, and nothing of it is measured
        d.proc.wait()
        d.log.close()
    for name, extra in (("bare", []), ("bare_with_our_headers", ["--headers"])):
        vg, out = wrapper(name)
        bare = Started(["quart", str(size), *extra], wrapper=vg)
        host, port = bare.line.split("//", 1)[1].rsplit(":", 1)
        try:
            results[name] = _per_request(bare.proc.pid, out, host, int(port), n)
        finally:
            bare.stop()
    ours = results["ours"]["per_request_M"]
    for name in ("bare", "bare_with_our_headers"):
        base = results[name]["per_request_M"]
        results[name]["ratio"] = base / ours
        print(f"  {'instructions: GET /v1/sessions':<34} {name + ' / ours':<28} {base / ours:.3f}  (ours "
              f"{ours:.3f} M per request, {name} {base:.3f} M; {n} requests)", flush=True)
    return results
