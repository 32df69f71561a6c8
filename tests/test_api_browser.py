"""The browser defences' pure functions (aegisd/surfaces/http/_browser.py), without a daemon: what each Host, Origin and
Content-Type is judged to be. tests/test_security_browser.py shows them over real HTTP and in Chromium."""

from __future__ import annotations

import pytest

from aegisd.core.errors import HostNotAllowed, OriginNotAllowed, UnsupportedMediaType
from aegisd.surfaces.http._browser import OriginKind as K
from aegisd.surfaces.http._browser import (
    Policy,
    check,
    check_body,
    cors_headers,
    host_entry,
    host_name,
    is_preflight,
    json_body_ok,
    origin_entry,
    origin_of,
)


@pytest.mark.parametrize(("header", "name"), [
    ("localhost", "localhost"), ("LocalHost:9100", "localhost"), ("localhost.:80", "localhost"),
    ("127.0.0.1:9100", "127.0.0.1"), ("[::1]:9100", "::1"), ("[0:0::1]", "::1"), ("a.example:", "a.example"),
    ("[::1", None), ("[zz]:1", None), ("::1", None), ("a.example:http", None), ("a.example:1:2", None),
    ("user@a.example", None), ("a.example/x", None), ("", None), (":80", None), ("bücher.example", None),
    ("a b", None), ("*.example", None),
])
def test_host_name(header: str, name: str | None) -> None:
    assert host_name(header) == name


def test_default_hosts() -> None:
    p = Policy.build()
    for ok in (None, "localhost", "localhost:1", "app.localhost", "a.b.localhost:9", "127.0.0.1:9100", "10.0.0.7",
               "[::1]:9100", "[2001:db8::1]", "LOCALHOST."):
        assert p.host_allowed(ok), ok
    for bad in ("evil.example", "localhost.evil.example", "127.0.0.1.nip.io", "mylocalhost", "", "[::1", "0x7f.1"):
        assert not p.host_allowed(bad), bad


def test_configured_hosts() -> None:
    p = Policy.build(bind_host="devbox.lan", base_url="https://aegis.example.com/prefix",
                     allowed_hosts=["One.Example", ".corp.example", "*.dev.example"])
    for ok in ("devbox.lan:9100", "aegis.example.com", "one.example:1", "corp.example", "a.b.corp.example",
               "dev.example", "x.dev.example"):
        assert p.host_allowed(ok), ok
    for bad in ("two.example", "a.one.example", "evilcorp.example", "corp.example.evil", "xdev.example"):
        assert not p.host_allowed(bad), bad
    # wildcard binds add nothing
    for wild in ("0.0.0.0", "::", "[::]", ""):
        assert Policy.build(bind_host=wild).hosts == frozenset()


@pytest.mark.parametrize("entry", ["http://a.example", "a.example:80", "*", "*.", "a/b", "", "a.*.example", "::1"])
def test_bad_host_entries(entry: str) -> None:
    with pytest.raises(ValueError, match="allowedHosts"):
        host_entry(entry)


@pytest.mark.parametrize(("value", "origin"), [
    ("http://localhost:9100", "http://localhost:9100"), ("HTTP://LocalHost:80", "http://localhost"),
    ("https://a.example:443", "https://a.example"), ("https://a.example/", "https://a.example"),
    ("http://[::1]:9100", "http://[::1]:9100"), ("http://127.0.0.1:9100", "http://127.0.0.1:9100"),
    ("null", None), ("", None), ("file://", None), ("chrome-extension://abc", None), ("http://", None),
    ("http://a.example/path", None), ("http://a.example?q", None), ("http://u:p@a.example", None),
    ("http://a.example:99999", None), ("http://a.example:x", None), ("ws://a.example", None),
])
def test_origin_of(value: str, origin: str | None) -> None:
    assert origin_of(value) == origin


def test_origin_entries() -> None:
    assert origin_entry(" https://App.Example:8443 ") == "https://app.example:8443"
    for bad in ("*", "https://*.example", "app.example", "https://app.example/x", "null"):
        with pytest.raises(ValueError, match="allowedOrigins"):
            origin_entry(bad)


def test_origin_kinds() -> None:
    p = Policy.build(base_url="https://aegis.example.com", allowed_origins=["http://app.example:3000"])
    kind = p.origin_kind
    assert kind(None, scheme="http", host="127.0.0.1:9100") is K.NONE
    # own: the request's scheme and Host (under whatever name the dashboard was opened), or baseUrl's origin
    assert kind("http://127.0.0.1:9100", scheme="http", host="127.0.0.1:9100") is K.OWN
    assert kind("http://localhost:9100", scheme="http", host="localhost:9100") is K.OWN
    assert kind("http://localhost", scheme="http", host="localhost:80") is K.OWN
    assert kind("http://localhost:9100", scheme="ws", host="localhost:9100") is K.OWN  # the WebSocket
    assert kind("https://aegis.example.com", scheme="http", host="127.0.0.1:9100") is K.OWN  # behind a proxy
    assert kind("http://app.example:3000", scheme="http", host="127.0.0.1:9100") is K.ALLOWED
    for refused in ("http://localhost:9100", "https://127.0.0.1:9100", "http://127.0.0.1:9101", "null",
                    "http://app.example", "http://evil.example", "garbage"):
        assert kind(refused, scheme="http", host="127.0.0.1:9100") is None, refused
    assert kind("http://127.0.0.1:9100", scheme="http", host=None) is None  # HTTP/1.0: no own origin to match


def test_check_raises_the_right_error() -> None:
    p = Policy.build()
    local = {"Host": "127.0.0.1:9100"}
    assert check(p, scheme="http", headers=local) is K.NONE
    with pytest.raises(HostNotAllowed, match="allowedHosts") as e:
        check(p, scheme="http", headers={"Host": "evil.example:9100", "Origin": "http://evil.example:9100"})
    assert e.value.status == 421 and e.value.code == "HOST_NOT_ALLOWED"
    with pytest.raises(OriginNotAllowed, match="allowedOrigins") as o:
        check(p, scheme="http", headers={**local, "Origin": "http://evil.example"})
    assert o.value.status == 403 and o.value.code == "ORIGIN_NOT_ALLOWED"
    with pytest.raises(OriginNotAllowed, match="null"):
        check(p, scheme="http", headers={**local, "Origin": "null"})


@pytest.mark.parametrize(("headers", "ok"), [
    ({}, True), ({"Content-Length": "0", "Content-Type": "text/plain"}, True),
    ({"Content-Length": "2", "Content-Type": "application/json"}, True),
    ({"Content-Length": "2", "Content-Type": "Application/JSON; charset=utf-8"}, True),
    ({"Content-Length": "2", "Content-Type": "text/plain"}, False),
    ({"Content-Length": "2", "Content-Type": "text/plain; a=application/json"}, False),
    ({"Content-Length": "2", "Content-Type": "application/json-patch+json"}, False),
    ({"Content-Length": "2"}, False),
    ({"Transfer-Encoding": "chunked"}, False),
    ({"Transfer-Encoding": "chunked", "Content-Type": "application/json"}, True),
    ({"Content-Length": "2", "Content-Type": "application/x-www-form-urlencoded"}, False),
])
def test_json_body_ok(headers: dict[str, str], ok: bool) -> None:
    assert json_body_ok(headers) is ok


def test_forms_only_on_the_device_flow() -> None:
    form = {"Content-Length": "9", "Content-Type": "application/x-www-form-urlencoded"}
    check_body(method="POST", path="/v1/auth/device/token", headers=form)
    check_body(method="POST", path="/v1/auth/device/authorize", headers=form)
    for method, path in (("POST", "/v1/sessions"), ("PUT", "/v1/auth/device/token"), ("POST", "/v1/rpc")):
        with pytest.raises(UnsupportedMediaType, match="Content-Type: application/json") as e:
            check_body(method=method, path=path, headers=form)
        assert e.value.status == 415 and e.value.code == "UNSUPPORTED_MEDIA_TYPE"


def test_cors_answers() -> None:
    assert is_preflight("OPTIONS", {"Origin": "http://a.example", "Access-Control-Request-Method": "POST"})
    assert not is_preflight("OPTIONS", {"Origin": "http://a.example"})
    assert not is_preflight("POST", {"Origin": "http://a.example", "Access-Control-Request-Method": "POST"})
    pre = cors_headers("http://a.example", preflight=True)
    assert pre["Access-Control-Allow-Origin"] == "http://a.example" and pre["Vary"] == "Origin"
    assert "Authorization" in pre["Access-Control-Allow-Headers"] and "POST" in pre["Access-Control-Allow-Methods"]
    assert not any("Credentials" in k for k in pre) and "Access-Control-Expose-Headers" in cors_headers("x")
    # conditional GETs from an allowed origin: it may send If-None-Match and read the ETag
    assert "If-None-Match" in pre["Access-Control-Allow-Headers"]
    assert "ETag" in cors_headers("x")["Access-Control-Expose-Headers"]
