"""The cookie store: the whole session sealed into chunked cookies, timeouts and revocations
checked on every read, and a browser's cookie jar in between."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from gateway.auth.sessions.cookies import CookiePolicy
from gateway.auth.sessions.sealing import Sealer
from gateway.auth.sessions.store import (
    CookieSessionStore,
    Lifetimes,
    MemoryRevocations,
    SessionTooLarge,
)
from tests.support.sessions import ISSUER, SECRET, Browser, make_session

LIFETIMES = Lifetimes(idle=3600, absolute=43200)
POLICY = CookiePolicy("gw", secure=True, chunk_bytes=1024, max_chunks=3)


def store(
    *,
    sealer: Sealer | None = None,
    policy: CookiePolicy = POLICY,
    revocations: MemoryRevocations | None = None,
) -> CookieSessionStore:
    return CookieSessionStore(
        policy, sealer or Sealer([SECRET]), LIFETIMES, revocations or MemoryRevocations()
    )


async def test_a_session_survives_the_round_trip_through_the_browser() -> None:
    cookies, browser, now = store(), Browser(), time.time()
    session = make_session(now=now)
    browser.receive(await cookies.create(session, None, now))
    loaded = await cookies.load(browser.cookie_header(), now + 1)
    assert loaded.session == session and loaded.problem is None
    assert session.access_token not in "".join(browser.jar.values())


async def test_a_large_session_spans_chunks_and_shrinking_deletes_the_stale_ones() -> None:
    cookies, browser, now = store(), Browser(), time.time()
    large = make_session(now=now, claims={"groups": ["g" * 40] * 30})
    browser.receive(await cookies.create(large, None, now))
    assert sorted(browser.jar) == ["__Host-gw.0", "__Host-gw.1", "__Host-gw.2"]
    loaded = await cookies.load(browser.cookie_header(), now)
    assert loaded.session == large
    small = replace(large, claims={"sub": "alice"}, id_token=None)
    browser.receive(await cookies.update(small, loaded, now))
    assert sorted(browser.jar) == ["__Host-gw"]
    assert (await cookies.load(browser.cookie_header(), now)).session == small


async def test_the_id_token_is_given_up_before_the_session_overflows() -> None:
    cookies, browser, now = store(), Browser(), time.time()
    session = make_session(
        now=now, id_token="eyJ." + "a" * 1800 + ".sig", claims={"groups": ["g" * 40] * 10}
    )
    browser.receive(await cookies.create(session, None, now))
    loaded = await cookies.load(browser.cookie_header(), now)
    assert loaded.session is not None and loaded.session.id_token is None
    too_large = make_session(now=now, claims={"groups": ["g" * 40] * 200})
    with pytest.raises(SessionTooLarge):
        await cookies.create(too_large, None, now)


@pytest.mark.parametrize(
    ("later", "problem"),
    [(3600, "expired"), (43200, "expired")],
)
async def test_an_idle_or_old_session_is_over(later: float, problem: str) -> None:
    """The sealed expiry is the nearer limit, so an idle cookie does not even open."""
    cookies, browser, now = store(), Browser(), time.time()
    browser.receive(await cookies.create(make_session(now=now), None, now))
    assert (await cookies.load(browser.cookie_header(), now + later)).problem == problem


async def test_activity_keeps_the_session_alive_until_the_absolute_limit() -> None:
    cookies, browser, now = store(), Browser(), time.time()
    session = make_session(now=now)
    browser.receive(await cookies.create(session, None, now))
    at = now
    while at + 3000 < now + 43200:
        at += 3000
        loaded = await cookies.load(browser.cookie_header(), at)
        assert loaded.session is not None, at - now
        browser.receive(await cookies.update(loaded.session.touched(at), loaded, at))
    # The seal carries the nearer limit, so at the absolute end the cookie no longer opens.
    assert (await cookies.load(browser.cookie_header(), now + 43200)).problem == "expired"


async def test_a_tampered_or_foreign_cookie_is_no_session() -> None:
    cookies, browser, now = store(), Browser(), time.time()
    browser.receive(await cookies.create(make_session(now=now), None, now))
    name, value = next(iter(browser.jar.items()))
    flipped = value[:30] + ("A" if value[30] != "A" else "B") + value[31:]
    assert (await cookies.load([f"{name}={flipped}"], now)).problem == "tampered"
    other = store(sealer=Sealer([b"z" * 32]))
    assert (await other.load(browser.cookie_header(), now)).problem == "unknown_key"


async def test_a_session_cookie_does_not_open_under_another_cookie_name() -> None:
    cookies, browser, now = store(), Browser(), time.time()
    browser.receive(await cookies.create(make_session(now=now), None, now))
    other = store(policy=CookiePolicy("other", secure=True))
    moved = [f"__Host-other={value}" for value in browser.jar.values()]
    assert (await other.load(moved, now)).problem == "tampered"


async def test_a_broken_chunk_set_is_no_session_and_gets_cleared() -> None:
    cookies, browser, now = store(), Browser(), time.time()
    browser.receive(
        await cookies.create(make_session(now=now, claims={"g": "x" * 1200}), None, now)
    )
    del browser.jar["__Host-gw.1"]
    loaded = await cookies.load(browser.cookie_header(), now)
    assert loaded.problem == "missing_chunk"
    browser.receive(await cookies.delete(loaded))
    assert browser.jar == {}


async def test_a_revoked_sid_or_subject_ends_sessions_created_before() -> None:
    revocations = MemoryRevocations()
    cookies, now = store(revocations=revocations), time.time()
    by_sid, by_sub = Browser(), Browser()
    by_sid.receive(await cookies.create(make_session(now=now, sid="s1"), None, now))
    by_sub.receive(await cookies.create(make_session(now=now, sid=None, subject="bob"), None, now))
    await cookies.end_sessions(ISSUER, sid="s1", subject=None, now=now + 1)
    await cookies.end_sessions(ISSUER, sid=None, subject="bob", now=now + 1)
    assert (await cookies.load(by_sid.cookie_header(), now + 2)).problem == "revoked"
    assert (await cookies.load(by_sub.cookie_header(), now + 2)).problem == "revoked"
    later = Browser()
    later.receive(
        await cookies.create(make_session(now=now + 5, sid=None, subject="bob"), None, now + 5)
    )
    assert (await cookies.load(later.cookie_header(), now + 6)).session is not None
    # A later login under the same OP session (a logout cancelled at the OP) is a new
    # session, not a revoked one: refusing it would loop between login and refusal.
    again = Browser()
    again.receive(await cookies.create(make_session(now=now + 5, sid="s1"), None, now + 5))
    assert (await cookies.load(again.cookie_header(), now + 6)).session is not None


async def test_revocations_are_bounded() -> None:
    revocations = MemoryRevocations(max_entries=5)
    for index in range(20):
        await revocations.revoke(ISSUER, sid=f"s{index}", subject=None, now=0, ttl=10**9)
    assert len(revocations._entries) == 5


async def test_a_new_login_overwrites_every_cookie_of_the_old_session() -> None:
    cookies, browser, now = store(), Browser(), time.time()
    browser.receive(
        await cookies.create(make_session(now=now, claims={"g": "x" * 1200}), None, now)
    )
    old = await cookies.load(browser.cookie_header(), now)
    fresh = make_session(now=now + 1, subject="alice")
    browser.receive(await cookies.create(fresh, old, now + 1))
    assert list(browser.jar) == ["__Host-gw"]
    assert (await cookies.load(browser.cookie_header(), now + 2)).session == fresh


async def test_the_cookie_lives_as_long_as_the_absolute_timeout() -> None:
    cookies, now = store(), time.time()
    headers = await cookies.create(make_session(now=now), None, now)
    assert "Max-Age=43200" in headers[0]
    session_only = CookieSessionStore(
        POLICY, Sealer([SECRET]), LIFETIMES, MemoryRevocations(), persistent=False
    )
    assert "Max-Age" not in (await session_only.create(make_session(now=now), None, now))[0]


async def test_a_session_sealed_with_a_retired_key_is_marked_for_resealing() -> None:
    now, browser = time.time(), Browser()
    browser.receive(
        await store(sealer=Sealer([b"o" * 32])).create(make_session(now=now), None, now)
    )
    rotated = store(sealer=Sealer([SECRET, b"o" * 32]))
    loaded = await rotated.load(browser.cookie_header(), now)
    assert loaded.session is not None and loaded.reseal
    browser.receive(await rotated.update(loaded.session, loaded, now))
    again = await rotated.load(browser.cookie_header(), now)
    assert again.session is not None and not again.reseal
    assert (await store(sealer=Sealer([SECRET])).load(browser.cookie_header(), now)).session


async def test_a_deleted_or_replaced_session_is_refused_from_a_copy() -> None:
    """Regression: deleting a cookie-store session (logout) or replacing it (a new login)
    left every copy of its cookie good when the session had no ``sid`` to revoke."""
    cookies, now = store(), time.time()
    for ending in ("delete", "create"):
        browser = Browser()
        browser.receive(await cookies.create(make_session(now=now, sid=None), None, now))
        copy = browser.cookie_header()
        loaded = await cookies.load(copy, now + 1)
        assert loaded.session is not None
        if ending == "delete":
            await cookies.delete(loaded)
        else:
            await cookies.create(make_session(now=now + 1, sid=None), loaded, now + 1)
        assert (await cookies.load(copy, now + 2)).problem == "revoked"


async def test_a_cookie_sealed_for_another_login_binding_is_no_session() -> None:
    """The same secrets and cookie name, another origin, issuer or client: no session."""
    here = CookieSessionStore(POLICY, Sealer([SECRET]), LIFETIMES, MemoryRevocations(),
                              binding="https://a.example\x00https://as\x00app")  # fmt: skip
    there = CookieSessionStore(POLICY, Sealer([SECRET]), LIFETIMES, MemoryRevocations(),
                               binding="https://a.example\x00https://as\x00other")  # fmt: skip
    now, browser = time.time(), Browser()
    browser.receive(await there.create(make_session(now=now), None, now))
    assert (await here.load(browser.cookie_header(), now)).problem == "tampered"
    assert (await there.load(browser.cookie_header(), now)).session is not None
