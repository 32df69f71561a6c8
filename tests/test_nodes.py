"""The nodes of the cluster as users see them: `GET /v1/nodes` (and one node, drain, undrain), `ag nodes`, and the
session's `node`. A daemon on the file store is a cluster of one: this daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import trio

from aegisd import __version__
from aegisd.ops import ErrorEnvelope, results

from .conftest import DaemonHandle
from .test_auth import MASTER, bearer, make_key

AG = str(Path(sys.executable).with_name("ag"))


def conforms(op: str, body: Any) -> Any:
    return msgspec.convert(body, results()[op], strict=True)


def refused(r: Any, status: int) -> dict[str, Any]:
    """An error answer: that status and the JSON error envelope."""
    assert r.status_code == status, (r.status_code, r.text)
    body: dict[str, Any] = r.json()
    msgspec.convert(body, ErrorEnvelope, strict=True)
    return body


async def one_node(d: DaemonHandle, **headers: str) -> dict[str, Any]:
    r = await d.http.get("/v1/nodes", headers=headers)
    assert r.status_code == 200, r.text
    conforms("nodes.list", r.json())
    (node,) = r.json()
    return node  # type: ignore[no-any-return]


async def test_the_one_node_is_this_daemon_and_counts_its_sessions(daemon_factory: Any, workdir: Path) -> None:
    d = await daemon_factory(sessionStore="file")
    node = await one_node(d)
    cluster = d.daemon.services.cluster
    assert cluster is not None
    assert node["id"] == cluster.node_id and node["local"] is True and node["status"] == "up"
    assert node["version"] == __version__ and node["sessions"] == 0
    assert node["capacity"] == d.daemon.config.maxSessions and node["startedAt"] <= node["lastHeartbeat"]
    assert node["workDirs"] == list(d.daemon.config.allowedWorkDirs)

    s = await d.create(workdir, reuse=False)
    await d.wait_status(s["id"], "idle")
    assert s["node"] == node["id"]  # the session says which node runs it
    got = (await d.http.get(f"/v1/sessions/{s['id']}")).json()
    assert got["node"] == node["id"]
    listed = (await d.http.get("/v1/sessions")).json()["sessions"]
    assert [x["node"] for x in listed] == [node["id"]]
    assert (await one_node(d))["sessions"] == 1
    r = await d.http.get(f"/v1/nodes/{node['id']}")
    assert r.status_code == 200 and r.json()["id"] == node["id"] and r.json()["sessions"] == 1, r.text
    conforms("nodes.get", r.json())

    assert (await d.http.delete(f"/v1/sessions/{s['id']}")).status_code == 200
    await d.wait_status(s["id"], "killed")
    assert (await one_node(d))["sessions"] == 0

    for path in ("/v1/nodes/unknown", "/v1/nodes/unknown/drain", "/v1/nodes/unknown/undrain"):
        r = await (d.http.get(path) if path.count("/") == 3 else d.http.post(path))
        body = refused(r, 404)
        assert body["code"] == "NOT_FOUND" and "node unknown not found" in body["message"], body
    assert (await one_node(d))["status"] == "up"  # an unknown id drained nothing


async def test_drain_and_undrain_are_for_admins_and_audited(daemon_factory: Any) -> None:
    d = await daemon_factory(sessionStore="file", authToken=MASTER)
    assert (await d.http.get("/v1/nodes")).status_code == 401
    operator = await make_key(d, "operator", "op")
    viewer = await make_key(d, "viewer", "viewer")
    node = await one_node(d, **bearer(viewer["key"]))  # any authenticated caller sees the nodes
    nid = node["id"]
    for who in (operator["key"], viewer["key"]):
        for verb in ("drain", "undrain"):
            body = refused(await d.http.post(f"/v1/nodes/{nid}/{verb}", headers=bearer(who)), 403)
            assert body["code"] == "FORBIDDEN" and "admin" in body["message"], body
    assert (await one_node(d, **bearer(MASTER)))["status"] == "up"

    r = await d.http.post(f"/v1/nodes/{nid}/drain", headers=bearer(MASTER))
    assert r.status_code == 200 and r.json()["status"] == "draining", r.text
    conforms("nodes.drain", r.json())
    assert (await one_node(d, **bearer(viewer["key"])))["status"] == "draining"
    r = await d.http.post(f"/v1/nodes/{nid}/undrain", headers=bearer(MASTER))
    assert r.status_code == 200 and r.json()["status"] == "up", r.text
    assert (await one_node(d, **bearer(MASTER)))["status"] == "up"

    audit = (await d.http.get("/v1/audit", params={"action": "node.drain"}, headers=bearer(MASTER))).json()
    assert [(x["action"], x["detail"]) for x in audit["records"]] == [("node.drain", {"nodeId": nid})]
    audit = (await d.http.get("/v1/audit", params={"action": "node.undrain"}, headers=bearer(MASTER))).json()
    assert [x["detail"] for x in audit["records"]] == [{"nodeId": nid}]


async def ag(d: DaemonHandle, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "AEGIS_CONFIG": "", "NO_COLOR": "1",
           "AEGIS_SOCKET": str(d.daemon.socket_path), "AEGIS_STATE_DIR": str(tmp_path / "cli-state")}
    with trio.fail_after(30):
        r = await trio.run_process([AG, *args], env=env, capture_stdout=True, capture_stderr=True, check=False)
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())


async def test_ag_nodes_lists_drains_and_refuses_an_unknown_node(daemon_factory: Any, workdir: Path,
                                                                 tmp_path: Path) -> None:
    d = await daemon_factory(sessionStore="file")
    s = await d.create(workdir, reuse=False)
    await d.wait_status(s["id"], "idle")
    nid = (await one_node(d))["id"]

    r = await ag(d, tmp_path, "nodes")
    assert r.returncode == 0, r.stderr
    head, row = r.stdout.splitlines()
    assert head.split() == ["ID", "STATUS", "SESSIONS/CAPACITY", "URL", "VERSION", "HEARTBEAT"]
    cells = row.split()
    assert cells[:4] == [nid, "*", "up", f"1/{d.daemon.config.maxSessions}"] and __version__ in cells, row

    r = await ag(d, tmp_path, "nodes", "--json")
    assert r.returncode == 0, r.stderr
    (listed,) = json.loads(r.stdout)
    assert listed["id"] == nid and listed["local"] is True and listed["sessions"] == 1
    assert json.loads((await ag(d, tmp_path, "--json", "nodes", "list")).stdout)[0]["id"] == nid

    r = await ag(d, tmp_path, "nodes", "drain", nid)
    assert r.returncode == 0 and f"Node {nid} is draining" in r.stdout, (r.stdout, r.stderr)
    assert (await one_node(d))["status"] == "draining"
    r = await ag(d, tmp_path, "nodes", "undrain", nid, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "up", (r.stdout, r.stderr)
    assert (await one_node(d))["status"] == "up"

    for verb in ("drain", "undrain"):
        r = await ag(d, tmp_path, "nodes", verb, "no-such-node")
        assert r.returncode == 1 and "node no-such-node not found" in r.stderr and "ag nodes" in r.stderr, r
    assert (await one_node(d))["status"] == "up"
