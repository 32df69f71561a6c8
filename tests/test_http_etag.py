"""Conditional GETs (issue 14): session reads carry a weak ETag, and a matching If-None-Match gets 304 with no
body, so pollers cost almost nothing; any change to what the body would say changes the ETag."""

from __future__ import annotations

from pathlib import Path

from aegisd.surfaces.http.routes import etag_matches

from .conftest import DaemonHandle


def test_if_none_match_weak_comparison() -> None:
    tag = 'W/"abc"'
    assert etag_matches('W/"abc"', tag) and etag_matches('"abc"', tag) and etag_matches("*", tag)
    assert etag_matches('"x", W/"abc"', tag)
    assert not etag_matches(None, tag) and not etag_matches("", tag) and not etag_matches('W/"abd"', tag)


async def test_session_list_and_get_answer_304_until_they_change(daemon: DaemonHandle, workdir: Path) -> None:
    http = daemon.http
    a = await daemon.create(workdir, reuse=False)
    for url in ("/v1/sessions", f"/v1/sessions/{a['id']}", f"/v1/sessions/{a['id']}/transcript",
                "/v1/sessions/stats", "/v1/permissions/pending"):
        r = await http.get(url)
        assert r.status_code == 200, url
        tag = r.headers["ETag"]
        assert tag.startswith('W/"') and r.headers["Cache-Control"] == "private, no-cache"
        again = await http.get(url, headers={"If-None-Match": tag})
        assert again.status_code == 304 and again.content == b"" and again.headers["ETag"] == tag, url
        assert again.headers["X-Request-Id"]
        other = await http.get(url, headers={"If-None-Match": 'W/"nope"'})
        assert other.status_code == 200 and other.json() == r.json(), url
    listed = await http.get("/v1/sessions")
    one = await http.get(f"/v1/sessions/{a['id']}")
    # a change to the session: the list and the session answer in full again, with new tags
    r = await http.post(f"/v1/sessions/{a['id']}/send", json={"text": "say:changed"})
    assert r.status_code == 200 and "ETag" not in r.headers  # writes carry none
    await daemon.wait_event(a["id"], "status", match=lambda ev: ev.data["status"] == "idle"
                            and ev.data.get("previous") == "running")
    for old in (listed, one):
        url = str(old.request.url)
        r = await http.get(url, headers={"If-None-Match": old.headers["ETag"]})
        assert r.status_code == 200 and r.headers["ETag"] != old.headers["ETag"], url
    b = await daemon.create(workdir, reuse=False)
    r = await http.get("/v1/sessions", headers={"If-None-Match": listed.headers["ETag"]})
    assert r.status_code == 200 and b["id"] in {s["id"] for s in r.json()["sessions"]}
    # reads with a side effect or that wait carry no ETag
    assert "ETag" not in (await http.get(f"/v1/sessions/{a['id']}/read")).headers
