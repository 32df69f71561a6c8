"""Renders docs/cli.md from the click commands, and aegisctl/data/ops.json from the operations registry (`make docs`);
tests keep both in step."""

from __future__ import annotations

import click


def _walk(cmd: click.Command, path: list[str]) -> list[tuple[list[str], click.Command]]:
    out = [(path, cmd)]
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd, info_name=" ".join(path))
        for name in sorted(cmd.list_commands(ctx)):  # the root's commands load on first use
            sub = cmd.get_command(ctx, name)
            assert sub is not None, name
            out += _walk(sub, path + [name])
    return out


def render_cli_reference() -> str:
    from aegisctl.cli import cli

    parts = ["# CLI reference\n",
             "Generated from the click commands by `make docs` (`python -m aegisctl._docs`); "
             "`tests/test_cli.py` fails when it is stale. `aegisctl`, `ag` and `aegis` are the same program.\n",
             "Exit codes: 0 ok, 1 error (one line on stderr saying what to do), 2 usage error, 130 interrupted.\n",
             "Shell completion: `eval \"$(_AG_COMPLETE=bash_source ag)\"` (or `zsh_source`, `fish_source`).\n"]
    for path, cmd in _walk(cli, ["ag"]):
        ctx = click.Context(cmd, info_name=" ".join(path), terminal_width=100, max_content_width=100,
                            help_option_names=["-h", "--help"])
        help_text = cmd.get_help(ctx)
        parts.append(f"## `{' '.join(path)}`\n\n```\n{help_text}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    from pathlib import Path

    from aegisctl import _catalogue

    target = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
    target.write_text(render_cli_reference())
    print(f"wrote {target}")
    _catalogue.PATH.write_text(_catalogue.render())  # what `ag rpc` knows of the operations
    print(f"wrote {_catalogue.PATH}")
