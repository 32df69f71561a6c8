#!/usr/bin/env python3
"""What a curious agent's tool does (stdlib only): talk to the daemon over its control socket or its loopback HTTP
port, as the user could. Run by the fake agent's `sh:` directive (tests/test_security_agent.py).

    agent_probe.py socket PATH '[[op, params], ...]'
    agent_probe.py http URL '[[method, path, body-or-null, token-or-null], ...]'

Prints one JSON line: a list of {"ok", "code", "status", "result"} in the order of the requests."""

from __future__ import annotations

import http.client
import json
import socket
import sys
import urllib.parse


def over_socket(path: str, calls: list[list]) -> list[dict]:
    out = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        f = s.makefile("rwb")
        for i, (op, params) in enumerate(calls):
            f.write(json.dumps({"id": i, "op": op, "params": params}).encode() + b"\n")
            f.flush()
            reply = json.loads(f.readline())
            err = reply.get("error") or {}
            out.append({"ok": reply.get("ok", False), "code": err.get("code"), "status": err.get("status"),
                        "result": reply.get("result")})
    return out


def over_http(url: str, calls: list[list]) -> list[dict]:
    parts = urllib.parse.urlsplit(url)
    out = []
    for method, path, body, token in calls:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        resp = conn.getresponse()
        data = json.loads(resp.read() or b"null")
        conn.close()
        ok = 200 <= resp.status < 300
        out.append({"ok": ok, "code": None if ok else (data or {}).get("code"), "status": resp.status,
                    "result": data if ok else None})
    return out


def main() -> None:
    kind, where, calls = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    result = over_socket(where, calls) if kind == "socket" else over_http(where, calls)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
