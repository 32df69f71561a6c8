"""What every command shares: the connection (on `ctx.obj`), errors as one line on stderr with the right exit code,
and the `--json` flag each command also accepts after its name."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click

from aegisctl.client import Client, ClientError, ConnectError

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class Ctx:
    def __init__(self, socket: str | None, url: str | None, json_out: bool) -> None:
        self.socket = socket
        self.url = url
        self.json = json_out
        self._client: Client | None = None

    def client(self, port: int | None = None) -> Client:
        if self._client is None:
            from aegisctl._conn import connect

            self._client = connect(socket_path=self.socket, url=self.url, port=port)
        return self._client

    def call(self, op: str, **params: Any) -> Any:
        return self.client().call(op, **params)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def explain(exc: ClientError) -> NoReturn:
    if isinstance(exc, ConnectError):
        fail(f"{exc.message}\n  start it with `ag serve` (foreground) or `ag run \"<prompt>\"` (starts it in the "
             "background); set AEGIS_SOCKET or --url if it runs elsewhere")
    if exc.status == 401:
        fail(f"{exc.message}\n  set AEGIS_AUTH_TOKEN to the daemon's token (or an API key), or sign in with "
             "`ag login` where single sign-on is set up")
    if exc.status == 403:
        fail(f"{exc.message}\n  your token's role does not allow this")
    if exc.code == "VALIDATION_ERROR":  # the daemon's message says what to give instead: as is
        fail(exc.message)
    fail(f"{exc.message} ({exc.code})")


def pass_ctx(fn: Any) -> Any:
    """Pass the Ctx and turn client errors into one-line messages with the right exit code."""
    import functools

    @click.pass_obj
    @functools.wraps(fn)
    def wrapper(obj: Ctx, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(obj, *args, **kwargs)
        except ClientError as exc:
            explain(exc)
    return wrapper


def json_option(fn: Any) -> Any:
    def set_json(ctx: click.Context, _param: Any, value: bool) -> None:
        if value:
            ctx.find_object(Ctx).json = True  # type: ignore[union-attr]
    return click.option("--json", "json_flag", is_flag=True, expose_value=False, callback=set_json,
                        help="Machine-readable output.")(fn)
