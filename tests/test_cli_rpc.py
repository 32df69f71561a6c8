"""`ag rpc OP key=value ...`: every operation of the registry, its params converted by the catalogue that `make docs`
generates from the registry (aegisctl/data/ops.json); and the command table of the CLI's root."""

from __future__ import annotations

import difflib
import json
import re
import signal
from pathlib import Path
from typing import Any

import click
import pytest
import trio
from click.testing import CliRunner

from aegisctl import _catalogue
from aegisctl.cli import cli
from aegisctl.cli._context import Ctx
from aegisctl.cli._root import COMMANDS
from aegisd.ops import REGISTRY, decode_params

from .conftest import start_daemon_process
from .test_cli import ag, runner_env


def test_every_command_of_the_table_loads_under_its_name() -> None:
    ctx = click.Context(cli)
    for name in COMMANDS:
        cmd = cli.get_command(ctx, name)
        assert cmd is not None and cmd.name == name, name
    assert cli.list_commands(ctx) == sorted(COMMANDS)


def test_ag_list_imports_no_daemon_module(tmp_path: Path) -> None:
    """The CLI starts fast: a session command loads click, the client and its topic, never the daemon."""
    import subprocess
    import sys

    code = ("import sys; from aegisctl.cli import main; sys.argv = ['ag', 'list']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('aegisd', 'msgspec', 'trio', 'httpx')))")
    r = subprocess.run([sys.executable, "-c", code], env=runner_env(tmp_path), capture_output=True, text=True)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


def test_the_catalogue_is_up_to_date() -> None:
    diff = "".join(difflib.unified_diff(_catalogue.PATH.read_text().splitlines(True),
                                        _catalogue.render().splitlines(True)))
    assert not diff, "aegisctl/data/ops.json is stale: run `make docs`\n" + diff[:2000]
    assert set(_catalogue.load()) == set(REGISTRY)


# ---- every operation -------------------------------------------------------------------------------------
def sample(prop: dict[str, Any]) -> Any:
    """A value the schema accepts (enough for the params structs of the registry)."""
    if "enum" in prop:
        return prop["enum"][0]
    if "anyOf" in prop:
        return sample(prop["anyOf"][0])
    kind = prop.get("type")
    if kind == "object":
        return {k: sample(prop["properties"][k]) for k in prop.get("required", [])}
    if kind == "array":
        return [sample(prop.get("items", {"type": "string"}))] * max(1, prop.get("minItems", 0))
    if kind in ("integer", "number"):
        return prop.get("minimum", 1)
    if kind == "boolean":
        return True
    if kind == "string" and "pattern" in prop:  # `^(admin|operator|viewer)$`, `^\\d{1,4}$`
        alternatives = re.findall(r"\^\(([^|()]+)\|", prop["pattern"])
        return next(c for c in ("abcd", "1", *alternatives) if re.search(prop["pattern"], c))
    return "abcd" if kind == "string" else {}


def as_args(params: dict[str, Any]) -> list[str]:
    """The params on a command line: scalars and lists of scalars as key=value, the rest as key:=JSON."""
    args = []
    for key, value in params.items():
        if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
            args += [f"{key}={v}" for v in value]
        elif isinstance(value, bool):
            args.append(f"{key}={'true' if value else 'false'}")
        elif isinstance(value, str | int | float):
            args.append(f"{key}={value}")
        else:
            args.append(f"{key}:={json.dumps(value)}")
    return args


class Recorder:
    """Stands in for the daemon's client: records what `ag rpc` sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.timeout = 60.0

    def call(self, op: str, **params: Any) -> Any:
        self.sent.append((op, params))
        return {"ok": True}

    def stream(self, op: str, **params: Any) -> Any:
        self.sent.append((op, params))
        yield {"id": 1, "event": "status"}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_operation_is_reachable(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each operation, its required params and each param it has, given on the command line: the params the
    daemon gets decode into the operation's own struct."""
    rec = Recorder()
    monkeypatch.setattr(Ctx, "client", lambda self, port=None: rec)
    schema = _catalogue.load()[name]["params"]
    props = schema.get("properties") or {}
    for given in ({k: sample(props[k]) for k in schema.get("required", [])},
                  {k: sample(p) for k, p in props.items()}):
        rec.sent.clear()
        r = CliRunner().invoke(cli, ["rpc", name, *as_args(given)], env=runner_env(tmp_path))
        assert r.exit_code == 0, (name, given, r.output)
        assert rec.sent == [(name, given)], (rec.sent, given)
        decode_params(REGISTRY[name], rec.sent[0][1])
        out = r.output.strip()
        assert json.loads(out.splitlines()[0] if REGISTRY[name].stream else out)


def test_values_are_converted_by_the_params_types(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder()
    monkeypatch.setattr(Ctx, "client", lambda self, port=None: rec)
    env = runner_env(tmp_path)
    r = CliRunner().invoke(cli, ["rpc", "session.list", "status=active", "limit=5", "page=2"], env=env)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["rpc", "auth.keys.create", "name=ci", "role=operator", "permissions=send",
                                 "permissions=kill", "ttlDays=3"], env=env)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["rpc", "session.create", "workDir=/w", "reuse=false", 'env:={"A": "1"}',
                                 "memoryKeys:=[\"a\", \"b\"]", "label:=null"], env=env)
    assert r.exit_code == 0, r.output
    assert rec.sent == [("session.list", {"status": "active", "limit": 5, "page": 2}),
                        ("auth.keys.create", {"name": "ci", "role": "operator", "permissions": ["send", "kill"],
                                              "ttlDays": 3}),
                        ("session.create", {"workDir": "/w", "reuse": False, "env": {"A": "1"},
                                            "memoryKeys": ["a", "b"], "label": None})]
    assert json.loads(r.output) == {"ok": True}
    # a wait gets its own timeout on top of the usual 60 s
    CliRunner().invoke(cli, ["rpc", "session.wait", "id=x", "timeoutSeconds=100"], env=env)
    assert rec.timeout == 160


@pytest.mark.parametrize(("args", "message"), [
    (["session.lst"], "unknown operation 'session.lst'. Did you mean `session.list`"),
    (["session.list", "stat=active"], "session.list has no param 'stat'. Did you mean `status`?"),
    (["session.get"], "session.get needs id="),
    (["session.list", "limit=many"], "`limit` wants an integer, not 'many'"),
    (["session.create", "workDir=/w", "reuse=perhaps"], "`reuse` wants true or false, not 'perhaps'"),
    (["session.set_mode", "id=x", "mode=yolo"], "`mode` wants one of "),
    (["session.create", "env=A=1"], "`env` is an object: give it as JSON, env:="),
    (["session.create", "env:={"], "env:= wants JSON"),
    (["session.get", "id=a", "id=b"], "`id` given twice"),
    (["session.get", "justaword"], "'justaword' is not KEY=VALUE or KEY:=JSON"),
])
def test_usage_errors(args: list[str], message: str, tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["rpc", *args], env=runner_env(tmp_path))
    assert r.exit_code == 2 and message in r.output, r.output


def test_listing_and_describing(tmp_path: Path) -> None:
    env = runner_env(tmp_path)
    r = CliRunner().invoke(cli, ["rpc"], env=env)
    assert r.exit_code == 0 and "session.create" in r.output and "events.follow (stream)" in r.output
    listed = json.loads(CliRunner().invoke(cli, ["rpc", "--json"], env=env).output)
    assert {o["name"] for o in listed} == set(REGISTRY)
    r = CliRunner().invoke(cli, ["rpc", "session.create", "--describe"], env=env)
    assert r.exit_code == 0 and "permissionMode" in r.output and "auto" in r.output, r.output
    described = json.loads(CliRunner().invoke(cli, ["rpc", "session.get", "--describe", "--json"], env=env).output)
    assert described["name"] == "session.get" and described["params"]["required"] == ["id"]


async def test_ag_rpc_against_a_daemon(nursery: trio.Nursery, tmp_path: Path, short_tmp: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    dp = await start_daemon_process(tmp_path, short_tmp, nursery=nursery)
    assert json.loads((await ag(dp, "rpc", "hello")).stdout)["daemon"] == "aegisd"
    s = json.loads((await ag(dp, "rpc", "session.create", f"workDir={work}", "prompt=say:hi", "name=viarpc",
                             "reuse=false")).stdout)
    waited = json.loads((await ag(dp, "rpc", "session.wait", f"id={s['id']}", "timeoutSeconds=20")).stdout)
    assert waited["status"] == "idle" and waited["timedOut"] is False
    listed = json.loads((await ag(dp, "rpc", "session.list", "status=active", "limit=5")).stdout)
    assert [x["name"] for x in listed["sessions"]] == ["viarpc"]
    # a streaming operation: one JSON line per event until it ends
    r = await ag(dp, "rpc", "session.follow", f"id={s['id']}", "afterId=0", "untilIdle=true")
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert "hi" in [e["data"].get("text") for e in events if e["event"] == "message"]
    # the daemon's own errors: exit 1 with its message
    r = await ag(dp, "rpc", "session.get", "id=nope", check=False)
    assert r.returncode == 1 and "SESSION_NOT_FOUND" in r.stderr
    dp.proc.send_signal(signal.SIGTERM)
    await dp.proc.wait()
