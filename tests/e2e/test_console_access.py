"""The console's access rules over real HTTP and a real redis-server (no broker: the console app in-process,
without its producer or feed): nothing with customer data answers without the token or a login, the token is
never in a page or cookie, a cookie-borne POST needs the page's own header, and ids with '/' link right."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from pulse.devstack import Server, start_redis
from pulse_config.settings import Settings
from schemas.profile import render_profile
from scoring.customer import assess_customer
from streams.console.app import COOKIE
from streams.sinks.redis_profiles import RedisProfileSink
from testing.console import serve_console
from testing.templates import template_states

pytestmark = pytest.mark.e2e

TOKEN = "console-access-token"
ODD_ID = "shop/42:x"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_redis(tmp_path_factory.mktemp("console-redis"))
    yield srv
    srv.stop()


@pytest.fixture
async def console(redis_server: Server) -> AsyncIterator[str]:
    settings = Settings(
        _env_file=None,
        redis_url=f"redis://127.0.0.1:{redis_server.port}/0",
        redis_key_prefix=f"acc{uuid.uuid4().hex[:6]}:",
        api_token=TOKEN,
    )
    templates = template_states(200, 7)
    config = settings.scoring()
    at_risk = []
    for state in templates.states:
        clv, risk = assess_customer(state, templates.clock_ms, 30.0, config)
        if risk.level != "low":
            at_risk.append(render_profile(ODD_ID, state, templates.clock_ms, config, "USD", clv, risk))
            break
    sink = RedisProfileSink(settings.redis_url, settings.redis_key_prefix, 1.0)
    sink.submit(at_risk)
    assert await sink.flush()
    await sink.close()
    async with serve_console(settings) as (base, _):
        yield base


def jar() -> aiohttp.CookieJar:
    """aiohttp's client keeps no cookie of a host given by IP address unless unsafe (a browser does)."""
    return aiohttp.CookieJar(unsafe=True)


async def test_nothing_without_the_token_or_a_login(console: str):
    async with aiohttp.ClientSession(cookie_jar=jar()) as http:
        for path in ("/fragments/queue", "/fragments/vips", "/fragments/population", "/events"):
            async with http.get(console + path) as r:
                assert r.status == 401, path
        for path in ("/", "/customers/x"):
            async with http.get(console + path, allow_redirects=False) as r:
                assert r.status == 302 and r.headers["Location"].startswith("/login?next=/"), path
        async with http.post(console + "/actions/x:churn:1/acknowledge", headers={"HX-Request": "true"}) as r:
            assert r.status == 401
        async with http.get(console + "/fragments/queue", headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
        # open: the login page, probes, metrics, the vendored htmx
        for path in ("/login", "/health", "/metrics", "/static/htmx-2.0.11.min.js", "/static/console.js"):
            async with http.get(console + path) as r:
                assert r.status == 200, path
        async with http.post(console + "/login", data={"name": "ana", "token": "wrong"}, allow_redirects=False) as r:
            assert r.status == 401 and COOKIE not in r.cookies
        async with http.post(console + "/login", data={"name": "ana", "token": TOKEN, "next": "//evil.example/"}) as r:
            assert r.status == 200 and str(r.url) == console + "/"  # followed to the queue, not elsewhere


async def test_a_login_or_the_bearer_token_shows_the_queue_and_never_the_token(console: str):
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        async with http.get(console + "/fragments/queue") as r:
            assert r.status == 200 and ODD_ID in await r.text()
    async with aiohttp.ClientSession(cookie_jar=jar()) as http:
        async with http.post(console + "/login", data={"name": "ana", "token": TOKEN}, allow_redirects=False) as r:
            assert r.status == 302
            cookie = r.cookies[COOKIE]
            assert cookie["httponly"] and cookie["samesite"] == "Strict" and TOKEN not in cookie.value
            assert not cookie["secure"]  # plain HTTP: a Secure cookie would never come back
        async with http.get(console + "/") as r:
            page = await r.text()
        assert r.status == 200 and TOKEN not in page and "ana" in page
        # the customer link of an id with '/' and ':' is one encoded path segment, and it opens the page
        link = re.search(r'href="(/customers/[^"]+)"', page).group(1)
        assert link == "/customers/shop%2F42%3Ax"
        async with http.get(console + link) as r:
            assert r.status == 200 and ODD_ID in await r.text()
        # a cookie-borne POST without the page's htmx header (another site's form) is refused
        async with http.post(console + "/actions/x:churn:1/acknowledge") as r:
            assert r.status == 403
    # behind a TLS-terminating proxy (X-Forwarded-Proto: https) the cookie is Secure
    async with aiohttp.ClientSession(cookie_jar=jar()) as http:
        async with http.post(
            console + "/login",
            data={"name": "ana", "token": TOKEN},
            headers={"X-Forwarded-Proto": "https"},
            allow_redirects=False,
        ) as r:
            assert r.status == 302 and r.cookies[COOKIE]["secure"]
