"""aegisctl / ag / aegis: the command line of Aegis.

Talks to aegisd over the control socket (or HTTP /v1/rpc with --url). Imports stay light: click and the
stdlib client; each topic's module loads when one of its commands runs (see ``COMMANDS`` in ``_root``), and the
daemon's modules only for the commands that need them (serve, init, doctor, config)."""

from aegisctl.cli._root import cli, main

__all__ = ["cli", "main"]
