"""`ag rpc OP key=value ...`: any operation of the daemon's registry, its params read from the operations
catalogue (aegisctl/data/ops.json, generated from the registry by `make docs`), never declared here."""

from __future__ import annotations

import difflib
import json
from typing import Any

import click

from aegisctl import _output as out
from aegisctl.cli._context import EXIT_USAGE, Ctx, fail, json_option, pass_ctx

CALL_TIMEOUT = 60.0  # as the client's default; an operation that waits (timeoutSeconds) gets its wait on top
TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
PERMISSIONS = {None: "any signed-in caller", "public": "anyone, even without a token", "admin": "admins",
               "operator": "admins and operators"}


def _kinds(schema: dict[str, Any]) -> list[str]:
    """The JSON types a schema allows, in its own order (an empty list: anything)."""
    kind = schema.get("type")
    if isinstance(kind, str):
        return [kind]
    if isinstance(kind, list):
        return [k for k in kind if isinstance(k, str)]
    found: list[str] = []
    for alt in schema.get("anyOf") or schema.get("oneOf") or []:
        found += [k for k in _kinds(alt) if k not in found]
    return found


def type_text(schema: dict[str, Any]) -> str:
    """A param's type, for people: `integer`, `string: default | plan`, `list of string`, `object`."""
    if "enum" in schema:
        return "one of " + " | ".join(map(str, schema["enum"]))
    kinds = _kinds(schema)
    if kinds == ["array"]:
        return "list of " + type_text(schema.get("items") or {})
    return " | ".join(kinds) or "any JSON"


def _wants(schema: dict[str, Any]) -> str:
    """What a value must be, in a sentence: `an integer`, `one of a | b`, `a string or an integer`."""
    if "enum" in schema:
        return type_text(schema)
    words = {"integer": "an integer", "number": "a number", "boolean": "true or false", "string": "a string",
             "object": "an object", "array": "a list", "null": "null"}
    return " or ".join(words.get(k, k) for k in _kinds(schema)) or "any JSON"


def _scalar(schema: dict[str, Any], text: str) -> Any:
    """The value of ``key=text`` for this schema; ValueError when it is not one."""
    if "enum" in schema:
        for choice in schema["enum"]:
            if str(choice) == text:
                return choice
        raise ValueError
    kinds = _kinds(schema)
    if not kinds:
        return text
    for kind in kinds:
        if kind == "boolean" and text.lower() in TRUE + FALSE:
            return text.lower() in TRUE
        if kind == "integer":
            try:
                return int(text)
            except ValueError:
                pass
        if kind == "number":
            try:
                return float(text)
            except ValueError:
                pass
        if kind == "string":
            return text
    raise ValueError


def parse_args(op: str, schema: dict[str, Any], args: tuple[str, ...]) -> dict[str, Any]:
    """``key=value`` / ``key:=JSON`` arguments as the operation's params, converted by the params' schema. A
    usage error (exit 2) for an unknown or missing param or a value of the wrong type."""
    props: dict[str, Any] = schema.get("properties") or {}
    params: dict[str, Any] = {}
    for arg in args:
        key, sep, text = arg.partition("=")
        as_json = key.endswith(":")
        key = key.removesuffix(":")
        if not sep or not key:
            fail(f"{op}: {arg!r} is not KEY=VALUE or KEY:=JSON", EXIT_USAGE)
        prop = props.get(key)
        if prop is None:
            close = difflib.get_close_matches(key, props, n=1, cutoff=0.6)
            hint = f" Did you mean `{close[0]}`?" if close else ""
            fail(f"{op} has no param {key!r}.{hint} Its params: {', '.join(props) or 'none'}", EXIT_USAGE)
        if as_json:
            try:
                value = json.loads(text)
            except ValueError as exc:
                fail(f"{op}: {key}:= wants JSON ({exc})", EXIT_USAGE)
            if key in params:
                fail(f"{op}: `{key}` given twice", EXIT_USAGE)
            params[key] = value
            continue
        kinds = _kinds(prop)
        is_list = "array" in kinds and not any(k in kinds for k in ("string", "integer", "number", "boolean"))
        target = (prop.get("items") or {}) if is_list else prop
        if _kinds(target) and not set(_kinds(target)) & {"string", "integer", "number", "boolean"} \
                and "enum" not in target:
            fail(f"{op}: `{key}` is {_wants(prop)}: give it as JSON, {key}:='...'", EXIT_USAGE)
        try:
            value = _scalar(target, text)
        except ValueError:
            fail(f"{op}: `{key}` wants {_wants(target)}, not {text!r}", EXIT_USAGE)
        if is_list:
            params.setdefault(key, [])
            if not isinstance(params[key], list):
                fail(f"{op}: `{key}` given twice", EXIT_USAGE)
            params[key].append(value)
        elif key in params:
            fail(f"{op}: `{key}` given twice (a list param takes the key once per item; this one is not a list)",
                 EXIT_USAGE)
        else:
            params[key] = value
    missing = [name for name in schema.get("required") or [] if name not in params]
    if missing:
        fail(f"{op} needs {', '.join(f'{m}=' for m in missing)} (`ag rpc {op} --describe` lists its params)",
             EXIT_USAGE)
    return params


def _lookup(name: str) -> dict[str, Any]:
    from aegisctl._catalogue import load

    ops = load()
    if name not in ops:
        close = difflib.get_close_matches(name, ops, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(f'`{c}`' for c in close)}?" if close else ""
        fail(f"unknown operation {name!r}.{hint} (`ag rpc` lists the operations)", EXIT_USAGE)
    entry: dict[str, Any] = ops[name]
    return entry


def _list_ops(c: Ctx) -> None:
    from aegisctl._catalogue import load

    ops = load()
    if c.json:
        out.echo_json([{"name": name, "summary": o["summary"], "permission": o["permission"], "stream": o["stream"]}
                       for name, o in ops.items()])
        return
    out.table(["operation", "summary"], [[name + (" (stream)" if o["stream"] else ""), out.one_line(o["summary"], 90)]
                                         for name, o in ops.items()])


def _describe(c: Ctx, name: str, entry: dict[str, Any]) -> None:
    if c.json:
        out.echo_json({"name": name, **entry})
        return
    schema = entry["params"]
    click.echo(f"{name}: {entry['summary']}")
    who = PERMISSIONS.get(entry["permission"]) or f"callers with the {entry['permission']} permission"
    click.echo(f"  who may call it: {who}")
    if entry["stream"]:
        click.echo("  streams events (one JSON line each) until it ends")
    props, required = schema.get("properties") or {}, set(schema.get("required") or [])
    if not props:
        click.echo("  no params")
        return
    out.table(["param", "type", "default"],
              [[key, type_text(prop), "(required)" if key in required else
                ("-" if "default" not in prop else json.dumps(prop["default"]))] for key, prop in props.items()])


@click.command()
@click.argument("op", required=False)
@click.argument("args", nargs=-1, metavar="[KEY=VALUE | KEY:=JSON]...")
@click.option("--describe", is_flag=True, help="Show the operation's params instead of calling it.")
@click.option("--timeout", type=click.FloatRange(min=1),
              help="Seconds to wait for the answer (default 60, plus the operation's timeoutSeconds).")
@json_option
@pass_ctx
def rpc(c: Ctx, op: str | None, args: tuple[str, ...], describe: bool, timeout: float | None) -> None:
    """Call any operation of the daemon, e.g. `ag rpc session.list status=active limit=5`.

    \b
    KEY=VALUE   a param, converted to its type: numbers, booleans (true/false), a choice;
                a list param takes the key once per item (permissions=send permissions=kill)
    KEY:=JSON   a param given as JSON: objects, lists, anything (env:='{"DEBUG": "1"}');
                null leaves the param out

    Without OP, lists the operations; with --describe, an operation's params and their types. Unknown
    operations and params, missing params and values of the wrong type are usage errors (exit 2). The result is
    printed as JSON; a streaming operation prints one JSON line per event until it ends."""
    if op is None:
        _list_ops(c)
        return
    entry = _lookup(op)
    if describe:
        _describe(c, op, entry)
        return
    params = parse_args(op, entry["params"], args)
    client = c.client()
    if entry["stream"]:
        for event in client.stream(op, **params):
            click.echo(json.dumps(event, ensure_ascii=False))
        return
    if timeout is None:
        waits = params.get("timeoutSeconds", (entry["params"].get("properties") or {}).get("timeoutSeconds", {})
                           .get("default", 0))
        timeout = CALL_TIMEOUT + (float(waits) if isinstance(waits, int | float) else 0.0)
    client.timeout = timeout
    out.echo_json(client.call(op, **params))
