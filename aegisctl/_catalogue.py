"""The catalogue of the daemon's operations, as the client sees them: for each operation of the registry
(aegisd/ops) its summary, permission, whether it streams, the JSON schema of its params struct and of its result.

`make docs` writes it to ``aegisctl/data/ops.json`` from the registry (``build``); a test fails when the file is
stale. The CLI reads the file (``load``) instead of importing the daemon's modules, so `ag rpc` starts as fast as
`ag list`, works against a remote daemon without the daemon's dependencies loaded, and never re-declares a
parameter by hand. Schemas come from ``msgspec.json.schema`` of the structs, made self-contained (``op_schema``;
the MCP tools use the same function)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

PATH = Path(__file__).resolve().parent / "data" / "ops.json"


def _inline(node: Any, defs: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
    """Replace every ``$ref`` by the definition it names (MCP clients want self-contained schemas), drop
    titles, and turn ``anyOf [X, null]`` with a null default into X: leaving a param out means the same."""
    if isinstance(node, list):
        return [_inline(x, defs, seen) for x in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if name in seen:
            raise ValueError(f"recursive schema {name} cannot be inlined")
        return _inline({**defs[name], **{k: v for k, v in node.items() if k != "$ref"}}, defs, (*seen, name))
    out = {k: _inline(v, defs, seen) for k, v in node.items() if k not in ("title", "$defs")}
    alts = out.get("anyOf")
    if isinstance(alts, list) and {"type": "null"} in alts and "default" in out and out["default"] is None:
        rest = [a for a in alts if a != {"type": "null"}]
        del out["default"]
        out.pop("anyOf")
        out = {**rest[0], **out} if len(rest) == 1 else {**out, "anyOf": rest}
    return out


def op_schema(params: type) -> dict[str, Any]:
    """The self-contained JSON schema of an operation's params struct."""
    import msgspec

    raw = msgspec.json.schema(params)
    schema: dict[str, Any] = _inline(raw, raw.get("$defs", {}))
    return schema


def _result_type(op: Any) -> Any:
    """The operation's declared result type (the registry requires one)."""
    return op.result


def build() -> dict[str, Any]:
    """The catalogue, from the registry (imports the daemon's operations)."""
    import msgspec

    from aegisd.ops import REGISTRY

    ops: dict[str, Any] = {}
    for name in sorted(REGISTRY):
        op = REGISTRY[name]
        result = _result_type(op)
        ops[name] = {"summary": op.summary, "permission": op.permission, "stream": op.stream,
                     "params": op_schema(op.params),
                     "result": msgspec.json.schema(result) if result is not None else None}
    return {"about": "Generated from the operations registry (aegisd/ops) by `make docs`; do not edit.",
            "ops": ops}


def render() -> str:
    return json.dumps(build(), indent=1, sort_keys=True, ensure_ascii=False) + "\n"


@cache
def load() -> dict[str, Any]:
    """The operations as the catalogue file describes them, by name."""
    ops: dict[str, Any] = json.loads(PATH.read_text())["ops"]
    return ops


if __name__ == "__main__":
    PATH.write_text(render())
    print(f"wrote {PATH}")
