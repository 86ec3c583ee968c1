"""Per-key and per-user limits (issue 12, part 2): rpm, tpm and a token budget per day or month.

Three layers: the decisions (gateway/limits.py) with plain values, no clock, no I/O; a real
gateway with a stub model server on SQLite and on PostgreSQL (bursts, the OpenAI SDK's
RateLimitError, token limits with the stub's fixed token counts, a key's and its owner's limits
together, the API that sets them); and three `python -m gateway serve` replicas on one real
PostgreSQL, where a burst of 10x the limit spread over all three admits exactly the limit.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlmodel import select

from gateway.db import create_engine, session_factory
from gateway.limiter import LocalCounts
from gateway.limits import (
    Check,
    Counts,
    Limits,
    admission_rows,
    decide,
    duration,
    minute_window,
    period_window,
    request_checks,
    token_rows,
    window_end,
)
from gateway.tables import RateWindow
from tests.support import secrets
from tests.support.env import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    Env,
    assert_openai_error,
    bearer,
    chat_body,
    env_settings,
    gateway_env,
    sse_data,
    stub_command,
    wait_until,
)
from tests.support.gateway_process import GatewayProcess, serve_environment
from tests.support.postgres import PostgresServer
from tests.test_layering import GATEWAY, impure, pure_module_imports

# 2026-03-31 23:59:30 UTC: the last half-minute of a day and of a month.
T = datetime(2026, 3, 31, 23, 59, 30, tzinfo=UTC).timestamp()


# ---- the decisions ---------------------------------------------------------------------------


def test_the_decision_module_does_no_io():
    assert impure(pure_module_imports(GATEWAY / "limits.py")) == []


def test_windows_are_aligned_utc_minutes_days_and_months():
    assert minute_window(T) == f"minute:{int(T) // 60}"
    assert window_end(minute_window(T)) == T + 30
    assert period_window("day", T) == "day:2026-03-31"
    assert window_end("day:2026-03-31") == T + 30
    assert period_window("month", T) == "month:2026-03"
    assert window_end("month:2026-03") == T + 30
    assert window_end("month:2026-12") == datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    assert window_end("day:2028-02-28") == datetime(2028, 2, 29, tzinfo=UTC).timestamp()
    with pytest.raises(ValueError, match="not a rate window"):
        window_end("hour:12")


class Stored:
    """Stands in for an ApiKey or User row (Limits.of reads only these attributes)."""

    def __init__(self, **values: Any) -> None:
        self.rpm = values.get("rpm")
        self.tpm = values.get("tpm")
        self.token_budget = values.get("token_budget")
        self.budget_period = values.get("budget_period")


def test_limits_of_a_row_are_none_when_nothing_is_set():
    assert Limits.of(Stored()) is None
    assert Limits.of(Stored(rpm=5)) == Limits(rpm=5)
    assert Limits.of(Stored(token_budget=9)) == Limits(token_budget=9, budget_period="month")
    assert Limits.of(Stored(token_budget=9, budget_period="day")) == Limits(
        token_budget=9, budget_period="day"
    )


def test_a_keys_and_its_owners_limits_all_apply():
    key = Limits(rpm=5, tpm=100)
    user = Limits(rpm=2, token_budget=1000, budget_period="day")
    checks = request_checks(3, key, 7, user, T)
    minute = minute_window(T)
    assert [(c.subject, c.window, c.kind, c.limit, c.name) for c in checks] == [
        ("key:3", minute, "requests", 5, "rpm"),
        ("key:3", minute, "tokens", 100, "tpm"),
        ("user:7", minute, "requests", 2, "rpm"),
        ("user:7", "day:2026-03-31", "tokens", 1000, "budget"),
    ]
    # One row per (subject, window), in one order (locks are taken in it), with its rpm.
    assert admission_rows(checks) == [
        (("key:3", minute), 5),
        (("user:7", "day:2026-03-31"), None),
        (("user:7", minute), 2),
    ]
    assert token_rows(checks) == [("key:3", minute), ("user:7", "day:2026-03-31")]
    assert request_checks(None, key, 7, None, T) == []  # a signed-in user: no key limits
    assert request_checks(3, None, 7, None, T) == []


def test_a_request_is_admitted_while_every_window_is_under_its_limit():
    checks = request_checks(3, Limits(rpm=2, tpm=10), 7, None, T)
    row = checks[0].row
    assert decide(checks, {}, T).admitted
    assert decide(checks, {row: Counts(1, 9)}, T).admitted
    full = decide(checks, {row: Counts(2, 0)}, T)
    assert not full.admitted
    assert full.denied is not None
    assert (full.denied.kind, full.denied.name) == ("requests", "rpm")
    spent = decide(checks, {row: Counts(0, 10)}, T)
    assert spent.denied is not None
    assert spent.denied.name == "tpm"


def test_the_limit_that_frees_up_last_binds_and_sets_retry_after():
    now = T - 3600  # an hour before the day ends
    user = Limits(token_budget=50, budget_period="day")
    checks = request_checks(3, Limits(rpm=1), 7, user, now)
    minute = minute_window(now)
    over = {("key:3", minute): Counts(1, 0), ("user:7", "day:2026-03-31"): Counts(0, 50)}
    decision = decide(checks, over, now)
    assert decision.denied is not None
    assert decision.denied.name == "budget"  # waiting out the minute would not help
    assert decision.retry_after() == 3630
    only_minute = decide(checks, {("key:3", minute): Counts(1, 0)}, now)
    assert only_minute.denied is not None
    assert only_minute.denied.name == "rpm"
    assert only_minute.retry_after() == 30
    headers = decision.headers()
    assert headers["retry-after"] == "3630"
    assert headers["x-ratelimit-remaining-tokens"] == "0"
    assert headers["x-ratelimit-limit-tokens"] == "50"
    message = decision.message()
    assert message.startswith("Rate limit reached for the token budget per day (token_budget)")
    assert "user 7" in message
    assert "Limit 50, Used 50" in message
    assert "PATCH /api/users/7" in message
    assert "2026-04-01 00:00:00 UTC" in message


def test_retry_after_is_whole_seconds_to_the_window_end_and_at_least_one():
    checks = request_checks(3, Limits(rpm=1), 7, None, T)
    full = {checks[0].row: Counts(1, 0)}
    assert decide(checks, full, T).retry_after() == 30
    assert decide(checks, full, T + 0.2).retry_after() == 30  # 29.8 s: rounded up
    assert decide(checks, full, T + 29.99).retry_after() == 1
    message = decide(checks, full, T).message()
    assert message.startswith("Rate limit reached for requests per minute (RPM) on API key 3")
    assert "Limit 1, Used 1, Requested 1." in message
    assert "PATCH /api/keys/3" in message


def test_headers_report_the_tightest_limit_of_each_kind():
    checks = request_checks(3, Limits(rpm=10, tpm=1000), 7, Limits(rpm=4), T)
    before = {("key:3", minute_window(T)): Counts(1, 400), ("user:7", minute_window(T)): Counts(2)}
    headers = decide(checks, before, T).headers()
    assert headers == {
        "x-ratelimit-limit-requests": "4",
        "x-ratelimit-remaining-requests": "1",  # 4 - 2 before - this one
        "x-ratelimit-reset-requests": "30s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "600",
        "x-ratelimit-reset-tokens": "30s",
    }


def test_durations_read_like_openais():
    assert duration(0.25) == "250ms"
    assert duration(1) == "1s"
    assert duration(42.1) == "43s"
    assert duration(90) == "1m30s"
    assert duration(86400 + 5) == "24h0m5s"


def test_local_counters_admit_exactly_the_limit_and_refuse_without_counting():
    counters = LocalCounts()
    checks = request_checks(3, Limits(rpm=5), 7, Limits(rpm=100), T)
    admitted = [counters.admit(checks, T).admitted for _ in range(50)]
    assert admitted.count(True) == 5
    assert admitted[:5] == [True] * 5
    # The refused 45 were not counted on the user's row either.
    assert counters.read([("user:7", minute_window(T))]) == {
        ("user:7", minute_window(T)): Counts(5)
    }
    tokens = request_checks(3, Limits(tpm=10), 7, None, T)
    assert counters.admit(tokens, T).admitted
    counters.add_tokens(token_rows(tokens), 10)
    assert not counters.admit(tokens, T).admitted
    counters.expire(T + 60)  # the minute is over; the written-behind rows stay until saved
    assert counters.take_dirty()
    counters.expire(T + 60)
    assert counters.counts == {}


def test_a_check_names_its_row_and_reset():
    check = Check("key:1", "day:2026-03-31", "tokens", 5, "budget")
    assert check.row == ("key:1", "day:2026-03-31")
    assert check.resets_at == T + 30


# ---- a real gateway --------------------------------------------------------------------------


async def clear_of_minute_end(margin: float = 8.0) -> None:
    """Per-minute counts start over each UTC minute: a burst must not straddle two, so wait out
    a minute's last seconds (a wall-clock condition, not a guess at how long something takes)."""
    left = 60 - time.time() % 60
    if left < margin:
        await asyncio.sleep(left + 0.1)


async def burst(env: Env, secret: str, count: int, model: str = "m") -> list[httpx.Response]:
    body = chat_body(model)
    return await asyncio.gather(
        *(
            env.http.post("/v1/chat/completions", json=body, headers=bearer(secret))
            for _ in range(count)
        )
    )


async def limits_of(env: Env, token: str, subject: str, ident: int) -> dict[str, Any]:
    response = await env.http.get("/api/usage", headers=bearer(token))
    assert response.status_code == 200, response.text
    for entry in response.json()["limits"]:
        if (entry["subject"], entry["id"]) == (subject, ident):
            found: dict[str, Any] = entry
            return found
    raise AssertionError(f"no {subject} {ident} in {response.json()['limits']}")


async def tokens_counted(env: Env, subject: str, ident: int, name: str, tokens: int) -> None:
    async def counted() -> bool:
        entry = await limits_of(env, env.token, subject, ident)
        return bool(entry[name]["used"] == tokens)

    await wait_until(counted, message=f"{subject} {ident}: {tokens} tokens counted in {name}")


@pytest.fixture
async def env(tmp_path: Path, database_url: str | None):
    async with gateway_env(tmp_path, env_settings(tmp_path, database_url=database_url)) as env:
        await env.add_stub("m", quiet=True)
        assert (await env.chat("m")).status_code == 200  # started (the admin has no limits)
        yield env


@pytest.mark.both_databases
async def test_a_burst_of_50_on_rpm_5_lets_exactly_5_through(env: Env):
    key = await env.new_key(rpm=5)
    await clear_of_minute_end()
    responses = await burst(env, key.secret, 50)
    assert Counter(r.status_code for r in responses) == {200: 5, 429: 45}

    refused = next(r for r in responses if r.status_code == 429)
    error = assert_openai_error(refused, 429, "rate_limit_exceeded", "requests")
    assert error["param"] is None
    assert f"requests per minute (RPM) on API key {key.id}" in error["message"]
    assert "Limit 5, Used 5" in error["message"]
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 60
    assert refused.headers["x-ratelimit-limit-requests"] == "5"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"].endswith("s")
    served = [r for r in responses if r.status_code == 200]
    assert sorted(r.headers["x-ratelimit-remaining-requests"] for r in served) == list("01234")
    assert all(r.json()["object"] == "chat.completion" for r in served)

    entry = await limits_of(env, env.token, "key", key.id)
    assert entry["rpm"]["limit"] == 5
    assert entry["rpm"]["used"] == 5
    assert entry["tpm"] is None
    assert entry["token_budget"] is None

    # The OpenAI SDK raises its RateLimitError, with the body and headers above.
    async with env.openai(key.secret) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.type == "requests"
    assert caught.value.response.headers["retry-after"].isdigit()

    # Refused requests are in the usage report, as 429s.
    usage = await env.http.get("/api/usage?group_by=key", headers=env.auth)
    [group] = [g for g in usage.json()["groups"] if g["key_id"] == key.id]
    assert (group["requests"], group["errors"]) == (51, 46)


@pytest.mark.both_databases
async def test_tokens_per_minute_count_when_each_answer_ends(env: Env):
    # The stub's answer to "hello" costs 5 tokens (1 prompt + 4 completion).
    key = await env.new_key(tpm=10)
    await clear_of_minute_end(20)
    for used in (5, 10):
        response = await env.post("/v1/chat/completions", chat_body("m"), token=key.secret)
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["total_tokens"] == 5
        await tokens_counted(env, "key", key.id, "tpm", used)
    refused = await env.post("/v1/chat/completions", chat_body("m"), token=key.secret)
    error = assert_openai_error(refused, 429, "rate_limit_exceeded", "tokens")
    assert "tokens per minute (TPM)" in error["message"]
    assert "Limit 10, Used 10." in error["message"]
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    # A stream counts its tokens too (from the usage chunk it asked for).
    other = await env.new_key(tpm=10)
    stream = chat_body("m", stream=True, stream_options={"include_usage": True})
    response = await env.post("/v1/chat/completions", stream, token=other.secret)
    assert response.status_code == 200, response.text
    assert response.headers["x-ratelimit-limit-tokens"] == "10"
    [usage] = [json.loads(d)["usage"] for d in sse_data(response.text) if '"usage"' in d]
    assert usage["total_tokens"] > 5  # one token per stub chunk
    await tokens_counted(env, "key", other.id, "tpm", usage["total_tokens"])


@pytest.mark.both_databases
async def test_a_daily_token_budget_set_by_an_admin_on_the_user(env: Env):
    user = await env.new_user("budget@example.com")
    key = await env.new_key(user.token)  # no limits on the key: the user's apply
    # The user cannot set their own limits.
    own = await env.http.patch(
        f"/api/users/{user.id}", json={"token_budget": 10**9}, headers=bearer(user.token)
    )
    assert own.status_code == 403, own.text
    response = await env.http.patch(
        f"/api/users/{user.id}", json={"token_budget": 5, "budget_period": "day"}, headers=env.auth
    )
    assert response.status_code == 200, response.text
    assert (response.json()["token_budget"], response.json()["budget_period"]) == (5, "day")
    assert response.json()["status"] == "approved"  # a limits-only PATCH changes nothing else

    assert (await env.post("/v1/chat/completions", chat_body("m"), token=key.secret)).is_success
    await tokens_counted(env, "user", user.id, "token_budget", 5)
    before = time.time()
    refused = await env.post("/v1/chat/completions", chat_body("m"), token=key.secret)
    after = time.time()
    error = assert_openai_error(refused, 429, "rate_limit_exceeded", "tokens")
    assert "token budget" in error["message"]
    assert f"user {user.id}" in error["message"]
    end = window_end(period_window("day", before))
    assert int(end - after) <= int(refused.headers["retry-after"]) <= int(end - before) + 1
    # Signed in with a password, the same user is held to the same budget.
    jwt = await env.post("/v1/chat/completions", chat_body("m"), token=user.token)
    assert_openai_error(jwt, 429, "rate_limit_exceeded", "tokens")
    # The user sees their own limits in /api/usage (and not other people's).
    entry = await limits_of(env, user.token, "user", user.id)
    assert entry["token_budget"]["period"] == "day"
    assert entry["token_budget"]["used"] == 5
    mine = (await env.http.get("/api/usage", headers=bearer(user.token))).json()["limits"]
    assert {(e["subject"], e["id"]) for e in mine} == {("user", user.id)}

    # Lifting the budget (null) lets the user through at once.
    response = await env.http.patch(
        f"/api/users/{user.id}", json={"token_budget": None}, headers=env.auth
    )
    assert response.status_code == 200, response.text
    assert (response.json()["token_budget"], response.json()["budget_period"]) == (None, None)
    assert (await env.post("/v1/chat/completions", chat_body("m"), token=key.secret)).is_success


@pytest.mark.both_databases
async def test_a_users_limit_binds_across_all_their_keys(env: Env):
    user = await env.new_user("two-keys@example.com")
    response = await env.http.patch(f"/api/users/{user.id}", json={"rpm": 3}, headers=env.auth)
    assert response.status_code == 200, response.text
    loose = await env.new_key(user.token, rpm=100)
    bare = await env.new_key(user.token)
    await clear_of_minute_end()
    first = await burst(env, loose.secret, 2)
    assert [r.status_code for r in first] == [200, 200]
    second = await burst(env, bare.secret, 5)
    assert Counter(r.status_code for r in second) == {200: 1, 429: 4}
    refused = next(r for r in second if r.status_code == 429)
    error = assert_openai_error(refused, 429, "rate_limit_exceeded", "requests")
    assert f"on user {user.id}" in error["message"]
    # The tighter limit binds: the key allows 1 a minute, the user 3.
    tight = await env.new_key(user.token, rpm=1)
    responses = await burst(env, tight.secret, 3)
    assert Counter(r.status_code for r in responses) == {429: 3}  # the user's 3 are used up
    assert all("on user" in r.json()["error"]["message"] for r in responses)


@pytest.mark.both_databases
async def test_without_limits_nothing_is_counted_or_added(env: Env, database_url: str | None):
    key = await env.new_key()
    responses = await burst(env, key.secret, 20)
    assert {r.status_code for r in responses} == {200}
    assert not any(name.startswith("x-ratelimit") for r in responses for name in r.headers)
    assert (await env.http.get("/api/usage", headers=env.auth)).json()["limits"] == []
    await env.handle.core.limiter.settle()  # PostgreSQL: token additions under way
    await env.handle.core.limiter.save()  # SQLite: what is held in memory
    async with env.handle.core.sessions() as session:
        rows = (await session.exec(select(RateWindow))).all()
    assert rows == []


@pytest.mark.both_databases
async def test_limits_are_set_and_validated_through_the_api(env: Env):
    user = await env.new_user("limits@example.com")

    async def create(**body: Any) -> httpx.Response:
        return await env.http.post(
            "/api/keys", json={"name": "k", **body}, headers=bearer(user.token)
        )

    created = await create(rpm=60, tpm=10_000, token_budget=1_000_000)
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["rpm"], body["tpm"], body["token_budget"], body["budget_period"]) == (
        60,
        10_000,
        1_000_000,
        "month",  # the default period
    )
    for bad in (
        {"rpm": 0},
        {"rpm": -1},
        {"rpm": "5"},
        {"rpm": 1.5},
        {"rpm": True},
        {"rpm": 1_000_001},
        {"tpm": 10**12 + 1},
        {"token_budget": 10**15 + 1},
        {"budget_period": "week", "token_budget": 5},
        {"budget_period": "day"},  # a period without a budget
    ):
        response = await create(**bad)
        assert response.status_code == 422, (bad, response.text)
    assert "budget_period needs a token_budget" in (await create(budget_period="day")).text

    key_id = body["id"]
    patch = await env.http.patch(
        f"/api/keys/{key_id}",
        json={"rpm": None, "budget_period": "day"},
        headers=bearer(user.token),
    )
    assert patch.status_code == 200, patch.text
    assert (patch.json()["rpm"], patch.json()["tpm"], patch.json()["budget_period"]) == (
        None,
        10_000,
        "day",
    )
    # An admin may change anyone's key; another user may not (it does not exist for them).
    stranger = await env.new_user("stranger@example.com")
    other = await env.http.patch(
        f"/api/keys/{key_id}", json={"rpm": 1000}, headers=bearer(stranger.token)
    )
    assert other.status_code == 404, other.text
    admin = await env.http.patch(f"/api/keys/{key_id}", json={"rpm": 7}, headers=env.auth)
    assert admin.status_code == 200, admin.text
    listed = (await env.http.get("/api/keys", headers=bearer(user.token))).json()
    assert [(k["rpm"], k["tpm"], k["token_budget"]) for k in listed] == [(7, 10_000, 1_000_000)]
    unknown = await env.http.patch("/api/keys/999999", json={"rpm": 7}, headers=env.auth)
    assert unknown.status_code == 404
    extra = await env.http.patch(f"/api/keys/{key_id}", json={"name": "x"}, headers=env.auth)
    assert extra.status_code == 422  # only limits change here


async def test_budgets_survive_a_restart_on_sqlite(tmp_path: Path):
    settings = env_settings(tmp_path)
    async with gateway_env(tmp_path, settings) as env:
        await env.add_stub("m", quiet=True)
        key = await env.new_key(token_budget=5)
        response = await env.post("/v1/chat/completions", chat_body("m"), token=key.secret)
        assert response.status_code == 200, response.text
    async with gateway_env(tmp_path, settings) as env:
        entry = await limits_of(env, env.token, "key", key.id)
        assert entry["token_budget"]["used"] == 5
        refused = await env.post("/v1/chat/completions", chat_body("m"), token=key.secret)
        assert_openai_error(refused, 429, "rate_limit_exceeded", "tokens")


# ---- three replicas on one PostgreSQL --------------------------------------------------------

SECRET = "limits-replicas-secret-" + "r" * 40
RPM = 10


async def test_three_replicas_admit_exactly_the_limit_together(tmp_path: Path, postgres_url: str):
    """A burst of 10x rpm, spread over three gateway processes at once, admits exactly rpm."""
    secrets.SEEN.add(SECRET)
    replicas: list[GatewayProcess] = []

    def start(index: int) -> GatewayProcess:
        home = tmp_path / f"home-{index}"
        env = serve_environment(home, SECRET, database_url=postgres_url)
        gateway = GatewayProcess(env, tmp_path / f"gateway-{index}.log")
        replicas.append(gateway)
        return gateway

    try:
        async with httpx.AsyncClient(
            timeout=60, trust_env=False, event_hooks=secrets.HOOKS
        ) as http:
            first = start(1)
            await first.wait_healthy()
            credentials = {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
            assert (await http.post(f"{first.url}/api/auth/register", json=credentials)).is_success
            login = await http.post(f"{first.url}/api/auth/login", json=credentials)
            admin = bearer(login.json()["access_token"])
            profile = {"name": "m", "command": stub_command("--quiet")}
            assert (
                await http.post(f"{first.url}/api/profiles", json=profile, headers=admin)
            ).is_success
            created = await http.post(
                f"{first.url}/api/keys", json={"name": "burst", "rpm": RPM}, headers=admin
            )
            assert created.status_code == 201, created.text
            key = bearer(created.json()["key"])
            # The others start once the profile exists (they load profiles at start).
            for index in (2, 3):
                start(index)
            for gateway in replicas:
                await gateway.wait_healthy()
                # Each replica's model server started by an unlimited caller (the admin).
                warm = await http.post(
                    f"{gateway.url}/v1/chat/completions", json=chat_body("m"), headers=admin
                )
                assert warm.status_code == 200, warm.text

            await clear_of_minute_end(15)
            responses = await asyncio.gather(
                *(
                    http.post(
                        f"{replicas[i % 3].url}/v1/chat/completions",
                        json=chat_body("m"),
                        headers=key,
                    )
                    for i in range(10 * RPM)
                )
            )
            assert Counter(r.status_code for r in responses) == {200: RPM, 429: 9 * RPM}
            for response in responses:
                if response.status_code == 429:
                    assert_openai_error(response, 429, "rate_limit_exceeded", "requests")

        engine = create_engine(postgres_url)
        try:
            async with session_factory(engine)() as session:
                rows = (await session.exec(select(RateWindow))).all()
        finally:
            await engine.dispose()
        assert [(r.subject, r.requests) for r in rows] == [(f"key:{created.json()['id']}", RPM)]
    finally:
        for gateway in replicas:
            gateway.terminate()


# ---- a PostgreSQL outage ---------------------------------------------------------------------


async def test_while_postgresql_is_down_each_replica_counts_on_its_own(
    tmp_path: Path, private_postgres: PostgresServer, caplog: pytest.LogCaptureFixture
):
    url = private_postgres.url(await private_postgres.create_database())
    async with gateway_env(tmp_path, env_settings(tmp_path, database_url=url)) as env:
        await env.add_stub("m", quiet=True)
        key = await env.new_key(rpm=3)
        await clear_of_minute_end(20)
        first = await env.post("/v1/chat/completions", chat_body("m"), token=key.secret)
        assert first.status_code == 200, first.text  # counted in PostgreSQL; login cached
        await asyncio.to_thread(private_postgres.halt)
        try:
            # Limits still hold, per replica: this one counts from zero in its own memory.
            responses = await burst(env, key.secret, 5)
            assert Counter(r.status_code for r in responses) == {200: 3, 429: 2}
            assert "counting in this gateway only" in caplog.text
        finally:
            await asyncio.to_thread(private_postgres.restart)
