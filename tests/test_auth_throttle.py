"""aegisd/auth/_throttle.py: failed authentications throttled per IP and credential, with injected time."""

from __future__ import annotations

import pytest

from aegisd.auth._throttle import AuthThrottle, fingerprint
from aegisd.core.errors import RateLimited


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def throttle(clock: Clock, **kw: int) -> AuthThrottle:
    return AuthThrottle(per_credential=5, distinct_per_ip=10, window_s=60.0, known_good=4, clock=clock, **kw)


def test_one_wrong_credential_locks_out_only_itself(clock: Clock) -> None:
    t = throttle(clock)
    for _ in range(5):
        assert t.wait("127.0.0.1", "wrong") == 0.0
        t.failed("127.0.0.1", "wrong")
    assert t.wait("127.0.0.1", "wrong") == pytest.approx(60.0)
    assert t.wait("127.0.0.1", "the-users-token") == 0.0  # never seen here: still checked
    assert t.wait("10.0.0.2", "wrong") == 0.0  # another IP: its own count
    with pytest.raises(RateLimited) as exc:
        t.guard("127.0.0.1", "wrong")
    assert exc.value.details == {"retryAfter": 60}
    clock.now += 30
    assert t.wait("127.0.0.1", "wrong") == pytest.approx(30.0)
    clock.now += 30
    assert t.wait("127.0.0.1", "wrong") == 0.0  # the window passed


def test_cycling_credentials_hits_the_ip_ceiling_but_known_good_ones_pass(clock: Clock) -> None:
    t = throttle(clock)
    ip = "127.0.0.1"
    t.succeeded(ip, "the-users-token")  # proven valid from this IP before the attack
    for i in range(10):
        assert t.wait(ip, f"guess-{i}") == 0.0
        t.failed(ip, f"guess-{i}")
        clock.now += 1
    # the 11th new credential is refused without being checked; so is a failed one retried
    assert t.wait(ip, "guess-10") == pytest.approx(50.0)  # when guess-0 leaves the window
    assert t.wait(ip, "guess-3") > 0
    assert t.wait(ip, "a-valid-token-never-used-here") > 0  # unknown here: refused too, until the window passes
    assert t.wait(ip, "the-users-token") == 0.0  # the user keeps working
    assert t.wait("10.0.0.9", "guess-10") == 0.0
    clock.now += 50
    assert t.wait(ip, "guess-10") == 0.0  # one slot freed


def test_failures_not_reported_beyond_the_ceiling_stay_bounded(clock: Clock) -> None:
    t = throttle(clock)
    for i in range(1000):  # a caller that reports failures without asking wait() first
        t.failed("::1", f"g{i}")
    assert len(t._ips["::1"].failures) == 10
    for i in range(5000):
        t.failed(f"10.{i // 250}.{i % 250}.1", "x")
    assert len(t._ips) <= 10_000


def test_a_known_good_credential_that_starts_failing_is_dropped(clock: Clock) -> None:
    t = throttle(clock)
    ip = "127.0.0.1"
    t.succeeded(ip, "key")
    for i in range(10):
        t.failed(ip, f"g{i}")
    assert t.wait(ip, "key") == 0.0
    t.failed(ip, "key")  # revoked since
    assert t.wait(ip, "key") > 0


def test_known_good_is_small_and_single_use_tokens_do_not_evict(clock: Clock) -> None:
    t = throttle(clock)
    ip = "127.0.0.1"
    t.succeeded(ip, "dashboard-key")
    for i in range(50):
        t.succeeded(ip, f"sse_{i}", remember=False)
    for i in range(3):
        t.succeeded(ip, f"key-{i}")
    for i in range(10):
        t.failed(ip, f"g{i}")
    assert t.wait(ip, "dashboard-key") == 0.0 and t.wait(ip, "sse_3") > 0
    t.succeeded(ip, "key-3")  # a fifth reusable one: the least recently used goes
    assert t.wait(ip, "dashboard-key") > 0 and t.wait(ip, "key-3") == 0.0
    assert len(t._ips[ip].good) == 4


def test_a_vouched_single_use_token_passes_the_ceiling_once(clock: Clock) -> None:
    t = throttle(clock)
    ip = "127.0.0.1"
    for i in range(10):
        t.failed(ip, f"sse_guess{i}")
    t.vouch(ip, "sse_minted")  # issued to a caller proven valid from this IP
    assert t.wait(ip, "sse_minted") == 0.0
    t.succeeded(ip, "sse_minted", remember=False)  # used up
    assert t.wait(ip, "sse_minted") > 0 and fingerprint("sse_minted") not in t._ips[ip].good


def test_only_fingerprints_are_kept(clock: Clock) -> None:
    t = throttle(clock)
    secret = "aegis_" + "ab" * 32
    t.failed("127.0.0.1", secret)
    t.succeeded("127.0.0.1", secret + "x")
    st = t._ips["127.0.0.1"]
    kept = [*st.failures, *st.good]
    assert kept == [fingerprint(secret), fingerprint(secret + "x")] and all(len(k) == 16 for k in kept)
    assert fingerprint("\ud800") != fingerprint("x")  # any string, even one that is not valid Unicode
