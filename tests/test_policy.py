"""Unit tests for the pure policy in gateway.serving.policy (no processes, no sleeps)."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import get_args

import pytest

from gateway.serving.policy import (
    Admit,
    Evict,
    Fail,
    Join,
    NeverFits,
    Ready,
    Request,
    ServerState,
    ServerView,
    Start,
    View,
    Wait,
    expired,
    next_expiry,
    next_step,
    plan_start,
    resident_bytes,
)

GB = 1 << 30
STATES: tuple[ServerState, ...] = get_args(ServerState)


def sv(
    name: str,
    state: ServerState = "ready",
    need: int = GB,
    *,
    inflight: int = 0,
    pinned: bool = False,
    last_used: float = 0.0,
    idle_ttl: float = 0.0,
) -> ServerView:
    return ServerView(
        name=name,
        state=state,
        need_bytes=need,
        inflight=inflight,
        pinned=pinned,
        last_used=last_used,
        idle_ttl=idle_ttl,
    )


# --- resident_bytes -----------------------------------------------------------------------


def test_resident_bytes_empty() -> None:
    assert resident_bytes([]) == 0


@pytest.mark.parametrize(
    ("state", "holds"),
    [
        ("stopped", False),
        ("starting", True),
        ("ready", True),
        ("stopping", True),
        ("failed", False),
    ],
)
def test_resident_bytes_by_state(state: ServerState, holds: bool) -> None:
    assert resident_bytes([sv("a", state, 3 * GB)]) == (3 * GB if holds else 0)


def test_resident_bytes_sums_all_holders_regardless_of_busy_or_pinned() -> None:
    servers = [
        sv("a", "ready", 1, inflight=2),
        sv("b", "starting", 10, pinned=True),
        sv("c", "stopping", 100),
        sv("d", "stopped", 1000),
        sv("e", "failed", 10000),
    ]
    assert resident_bytes(servers) == 111


def test_resident_bytes_accepts_any_iterable() -> None:
    assert resident_bytes(sv(n, need=5) for n in "abc") == 15


# --- plan_start: NeverFits ----------------------------------------------------------------


def test_never_fits_with_empty_pool() -> None:
    assert plan_start("t", 11, [], 10) == NeverFits(need_bytes=11, cap_bytes=10)


def test_never_fits_comes_first_even_when_evictions_or_waits_are_possible() -> None:
    servers = [sv("idle", need=5), sv("busy", need=5, inflight=1)]
    assert plan_start("t", 11, servers, 10) == NeverFits(need_bytes=11, cap_bytes=10)


def test_need_equal_to_cap_is_not_never_fits() -> None:
    assert plan_start("t", 10, [], 10) == Admit()


def test_zero_cap_zero_need_admits() -> None:
    assert plan_start("t", 0, [], 0) == Admit()


@pytest.mark.parametrize(("need", "cap"), [(-1, 10), (1, -1)])
def test_negative_inputs_are_rejected(need: int, cap: int) -> None:
    with pytest.raises(ValueError, match=">= 0"):
        plan_start("t", need, [], cap)


# --- plan_start: Admit --------------------------------------------------------------------


def test_admits_into_empty_pool() -> None:
    assert plan_start("t", 4, [], 10) == Admit()


def test_admits_when_it_fits_exactly() -> None:
    servers = [sv("a", need=3), sv("b", "starting", need=3)]
    assert plan_start("t", 4, servers, 10) == Admit()


def test_one_byte_over_is_not_admitted() -> None:
    servers = [sv("a", need=3), sv("b", "starting", need=3)]
    assert plan_start("t", 5, servers, 10) == Evict(victims=("a",))


@pytest.mark.parametrize("state", ["stopped", "failed"])
def test_stopped_and_failed_servers_hold_no_memory(state: ServerState) -> None:
    servers = [sv("a", state, need=9), sv("b", state, need=9)]
    assert plan_start("t", 10, servers, 10) == Admit()


@pytest.mark.parametrize("state", STATES)
def test_target_own_entry_never_counts_as_resident(state: ServerState) -> None:
    servers = [sv("t", state, need=8), sv("a", need=2, inflight=1)]
    assert plan_start("t", 8, servers, 10) == Admit()


@pytest.mark.parametrize("state", ["stopped", "failed"])
def test_target_present_as_stopped_or_failed_is_ignored(state: ServerState) -> None:
    # Its stale need_bytes must not be used in place of the need passed in.
    servers = [sv("t", state, need=1), sv("a", need=5)]
    assert plan_start("t", 6, servers, 10) == Evict(victims=("a",))


# --- plan_start: Evict --------------------------------------------------------------------


def test_evicts_least_recently_used_first() -> None:
    servers = [
        sv("new", need=4, last_used=30.0),
        sv("old", need=4, last_used=10.0),
        sv("mid", need=4, last_used=20.0),
    ]
    assert plan_start("t", 4, servers, 12) == Evict(victims=("old",))


def test_evicts_minimal_prefix_only() -> None:
    servers = [
        sv("a", need=3, last_used=1.0),
        sv("b", need=3, last_used=2.0),
        sv("c", need=3, last_used=3.0),
        sv("d", need=3, last_used=4.0),
    ]
    # resident 12, need 5, cap 12: must free 5 -> a and b (6), not c or d.
    assert plan_start("t", 5, servers, 12) == Evict(victims=("a", "b"))


def test_evicts_prefix_even_if_a_later_single_victim_would_do() -> None:
    # LRU order wins over "fewest victims": the policy is LRU, not bin packing.
    servers = [
        sv("old_small", need=1, last_used=1.0),
        sv("new_big", need=9, last_used=2.0),
    ]
    assert plan_start("t", 5, servers, 10) == Evict(victims=("old_small", "new_big"))


def test_evict_stops_as_soon_as_it_fits_exactly() -> None:
    servers = [sv("a", need=5, last_used=1.0), sv("b", need=5, last_used=2.0)]
    assert plan_start("t", 5, servers, 10) == Evict(victims=("a",))


def test_evicts_all_candidates_when_all_are_needed() -> None:
    servers = [sv("a", need=5, last_used=2.0), sv("b", need=5, last_used=1.0)]
    assert plan_start("t", 10, servers, 10) == Evict(victims=("b", "a"))


def test_lru_ties_are_broken_by_name() -> None:
    servers = [sv(n, need=5, last_used=7.0) for n in ("c", "a", "b")]
    assert plan_start("t", 5, servers, 15) == Evict(victims=("a",))
    assert plan_start("t", 10, servers, 15) == Evict(victims=("a", "b"))


def test_result_does_not_depend_on_input_order() -> None:
    servers = [
        sv("a", need=3, last_used=5.0),
        sv("b", need=3, last_used=1.0),
        sv("c", need=3, last_used=5.0),
        sv("d", need=3, last_used=2.0),
        sv("busy", need=3, inflight=1),
    ]
    expected = plan_start("t", 9, servers, 15)
    # Must free 9: b (1.0), d (2.0), then a before c (tie at 5.0, broken by name).
    assert expected == Evict(victims=("b", "d", "a"))
    rng = random.Random(1)
    for _ in range(20):
        shuffled = servers[:]
        rng.shuffle(shuffled)
        assert plan_start("t", 9, shuffled, 15) == expected


@pytest.mark.parametrize(
    "blocker",
    [
        pytest.param(sv("x", "ready", 5, pinned=True), id="pinned"),
        pytest.param(sv("x", "ready", 5, inflight=1), id="busy"),
        pytest.param(sv("x", "starting", 5), id="starting"),
    ],
)
def test_never_evicts_non_candidates_even_when_least_recent(blocker: ServerView) -> None:
    servers = [blocker, sv("y", need=5, last_used=100.0)]
    assert plan_start("t", 5, servers, 10) == Evict(victims=("y",))


@pytest.mark.parametrize("state", STATES)
def test_never_evicts_the_target_itself(state: ServerState) -> None:
    servers = [sv("t", state, need=5, last_used=0.0), sv("y", need=5, last_used=100.0)]
    assert plan_start("t", 5, servers, 5) == Evict(victims=("y",))


def test_pinned_busy_server_is_a_blocker_not_a_candidate() -> None:
    servers = [sv("x", need=5, pinned=True, inflight=3)]
    assert plan_start("t", 6, servers, 10) == Wait(blockers=("x",), shortfall_bytes=1)


# --- plan_start: Wait ---------------------------------------------------------------------


def test_wait_when_only_busy_servers_stand_in_the_way() -> None:
    servers = [sv("b", need=6, inflight=1), sv("a", need=3, inflight=2)]
    assert plan_start("t", 5, servers, 10) == Wait(blockers=("a", "b"), shortfall_bytes=4)


def test_wait_evicts_nothing_when_candidates_are_insufficient() -> None:
    servers = [
        sv("idle1", need=2, last_used=1.0),
        sv("idle2", need=2, last_used=2.0),
        sv("busy", need=5, inflight=1),
        sv("pin", need=3, pinned=True),
    ]
    # resident 12, all candidates 4, need 6, cap 12 -> 12 - 4 + 6 - 12 = 2 missing.
    decision = plan_start("t", 6, servers, 12)
    assert decision == Wait(blockers=("busy", "pin"), shortfall_bytes=2)


def test_wait_blockers_include_every_kind_and_are_sorted() -> None:
    servers = [
        sv("z_stopping", "stopping", need=1),
        sv("y_starting", "starting", need=1),
        sv("x_busy", need=1, inflight=1),
        sv("w_pinned", need=1, pinned=True),
        sv("v_idle", need=1),
        sv("u_stopped", "stopped", need=100),
        sv("s_failed", "failed", need=100),
    ]
    decision = plan_start("t", 8, servers, 10)
    assert decision == Wait(
        blockers=("w_pinned", "x_busy", "y_starting", "z_stopping"),
        shortfall_bytes=5 - 1 + 8 - 10,
    )


def test_stopping_server_alone_in_the_way_means_wait() -> None:
    servers = [sv("going", "stopping", need=6)]
    assert plan_start("t", 6, servers, 10) == Wait(blockers=("going",), shortfall_bytes=2)


def test_a_stop_under_way_that_frees_enough_is_waited_for_not_added_to() -> None:
    # Evicting "idle" too would be one eviction more than needed (re-plans see "going" still
    # resident while it exits).
    servers = [sv("going", "stopping", need=6), sv("idle", need=2)]
    assert plan_start("t", 4, servers, 10) == Wait(blockers=("going",), shortfall_bytes=2)


def test_idle_servers_are_still_evicted_when_the_stops_under_way_are_not_enough() -> None:
    servers = [sv("going", "stopping", need=2), sv("idle", need=6)]
    assert plan_start("t", 6, servers, 10) == Evict(victims=("idle",))


def test_wait_shortfall_is_one_byte_at_the_boundary() -> None:
    servers = [sv("idle", need=4), sv("busy", need=4, inflight=1)]
    assert plan_start("t", 7, servers, 10) == Wait(blockers=("busy",), shortfall_bytes=1)
    assert plan_start("t", 6, servers, 10) == Evict(victims=("idle",))


def test_target_entry_is_never_a_blocker() -> None:
    servers = [sv("t", "stopping", need=5), sv("busy", need=6, inflight=1)]
    assert plan_start("t", 5, servers, 10) == Wait(blockers=("busy",), shortfall_bytes=1)


def test_stopped_and_failed_servers_are_never_blockers() -> None:
    servers = [
        sv("off", "stopped", need=5),
        sv("dead", "failed", need=5),
        sv("busy", need=6, inflight=1),
    ]
    assert plan_start("t", 5, servers, 10) == Wait(blockers=("busy",), shortfall_bytes=1)


# --- expired ------------------------------------------------------------------------------


def test_expired_empty() -> None:
    assert expired([], 100.0) == []


@pytest.mark.parametrize(
    ("now", "is_expired"),
    [(109.999, False), (110.0, True), (500.0, True)],
)
def test_expired_boundary_equal_to_ttl_expires(now: float, is_expired: bool) -> None:
    servers = [sv("a", last_used=100.0, idle_ttl=10.0)]
    assert expired(servers, now) == (["a"] if is_expired else [])


def test_expired_honours_per_server_ttl() -> None:
    servers = [
        sv("short", last_used=1.0, idle_ttl=5.0),
        sv("long", last_used=0.0, idle_ttl=50.0),
    ]
    assert expired(servers, 10.0) == ["short"]
    assert expired(servers, 50.0) == ["long", "short"]  # oldest first


def test_zero_ttl_never_expires() -> None:
    assert expired([sv("a", last_used=0.0, idle_ttl=0.0)], 1e12) == []


@pytest.mark.parametrize(
    "server",
    [
        pytest.param(sv("a", inflight=1, idle_ttl=1.0), id="busy"),
        pytest.param(sv("a", pinned=True, idle_ttl=1.0), id="pinned"),
        pytest.param(sv("a", "starting", idle_ttl=1.0), id="starting"),
        pytest.param(sv("a", "stopping", idle_ttl=1.0), id="stopping"),
        pytest.param(sv("a", "stopped", idle_ttl=1.0), id="stopped"),
        pytest.param(sv("a", "failed", idle_ttl=1.0), id="failed"),
        pytest.param(sv("a", idle_ttl=0.0), id="no-ttl"),
    ],
)
def test_ineligible_servers_never_expire(server: ServerView) -> None:
    assert expired([server], 1e9) == []
    assert next_expiry([server], 1e9) is None


def test_expired_sorted_by_last_used_then_name() -> None:
    servers = [
        sv("c", last_used=3.0, idle_ttl=1.0),
        sv("b", last_used=1.0, idle_ttl=1.0),
        sv("a", last_used=3.0, idle_ttl=1.0),
        sv("d", last_used=2.0, idle_ttl=1.0),
    ]
    assert expired(servers, 100.0) == ["b", "d", "a", "c"]


def test_expired_counts_from_last_used() -> None:
    # The supervisor stamps last_used at the end of a request; a recent end keeps it alive.
    servers = [sv("a", last_used=95.0, idle_ttl=10.0)]
    assert expired(servers, 100.0) == []


# --- next_expiry --------------------------------------------------------------------------


def test_next_expiry_none_for_empty() -> None:
    assert next_expiry([], 0.0) is None


def test_next_expiry_seconds_until_earliest() -> None:
    servers = [
        sv("a", last_used=100.0, idle_ttl=30.0),  # at 130
        sv("b", last_used=110.0, idle_ttl=10.0),  # at 120
        sv("c", last_used=0.0, idle_ttl=0.0),  # never
        sv("d", last_used=0.0, idle_ttl=1.0, inflight=1),  # busy: not eligible
    ]
    assert next_expiry(servers, 112.5) == pytest.approx(7.5)


@pytest.mark.parametrize(("now", "expected"), [(110.0, 0.0), (200.0, 0.0), (105.0, 5.0)])
def test_next_expiry_is_zero_once_due_never_negative(now: float, expected: float) -> None:
    servers = [sv("a", last_used=100.0, idle_ttl=10.0)]
    assert next_expiry(servers, now) == pytest.approx(expected)


def test_next_expiry_zero_iff_expired_non_empty() -> None:
    rng = random.Random(7)
    for _ in range(500):
        servers = [
            sv(
                f"s{i}",
                rng.choice(STATES),
                inflight=rng.choice([0, 0, 1]),
                pinned=rng.random() < 0.2,
                last_used=rng.choice([0.0, 1.5, 10.0, 20.0, 100.0]),
                idle_ttl=rng.choice([0.0, 1.0, 10.0, 60.0]),
            )
            for i in range(rng.randint(0, 6))
        ]
        now = rng.choice([0.0, 10.0, 20.0, 30.0, 200.0])
        nxt = next_expiry(servers, now)
        names = expired(servers, now)
        if nxt is None:
            assert names == []
        else:
            assert nxt >= 0.0
            assert (nxt == 0.0) == bool(names)


# --- invariants over random pools ---------------------------------------------------------


def _random_pool(rng: random.Random) -> list[ServerView]:
    names = rng.sample(["a", "b", "c", "d", "e", "f", "g", "t"], rng.randint(0, 8))
    return [
        sv(
            name,
            rng.choice(STATES),
            rng.randint(0, 10),
            inflight=rng.choice([0, 0, 0, 1, 3]),
            pinned=rng.random() < 0.15,
            last_used=float(rng.randint(0, 5)),  # small range: plenty of ties
        )
        for name in names
    ]


def _is_candidate(s: ServerView, target: str) -> bool:
    return s.state == "ready" and s.inflight == 0 and not s.pinned and s.name != target


@pytest.mark.parametrize("seed", range(10))
def test_plan_start_invariants_on_random_pools(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(500):
        servers = _random_pool(rng)
        target = "t"
        need = rng.randint(0, 25)
        cap = rng.randint(0, 30)
        others = [s for s in servers if s.name != target]
        by_name = {s.name: s for s in servers}
        resident = resident_bytes(others)
        candidates = sorted(
            (s for s in others if _is_candidate(s, target)), key=lambda s: (s.last_used, s.name)
        )
        all_candidates = sum(s.need_bytes for s in candidates)

        decision = plan_start(target, need, servers, cap)
        stopping = [s for s in others if s.state == "stopping"]
        stops_suffice = (
            resident + need > cap >= resident - sum(s.need_bytes for s in stopping) + need
        )

        assert isinstance(decision, NeverFits) == (need > cap)
        if stops_suffice and need <= cap:
            assert decision == Wait(
                blockers=tuple(sorted(s.name for s in stopping)),
                shortfall_bytes=resident + need - cap,
            )
            continue
        match decision:
            case NeverFits():
                assert decision == NeverFits(need_bytes=need, cap_bytes=cap)
            case Admit():
                assert resident + need <= cap
            case Evict(victims=victims):
                assert victims, "an eviction names at least one victim"
                assert resident + need > cap, "no eviction when it already fits"
                assert len(set(victims)) == len(victims)
                assert all(_is_candidate(by_name[v], target) for v in victims)
                assert list(victims) == [c.name for c in candidates[: len(victims)]]
                freed = sum(by_name[v].need_bytes for v in victims)
                assert resident - freed + need <= cap
                last = by_name[victims[-1]].need_bytes
                assert resident - (freed - last) + need > cap, "minimal prefix"
            case Wait(blockers=blockers, shortfall_bytes=shortfall):
                assert resident - all_candidates + need > cap
                assert shortfall == resident - all_candidates + need - cap
                assert shortfall > 0
                assert list(blockers) == sorted(blockers)
                expected = sorted(
                    s.name
                    for s in others
                    if s.state in ("starting", "ready", "stopping") and not _is_candidate(s, target)
                )
                assert list(blockers) == expected
                assert blockers, "a wait always has something to wait for"
                assert target not in blockers
            case _:
                pytest.fail(f"unexpected decision {decision!r}")


@pytest.mark.parametrize("seed", range(5))
def test_plan_start_converges_when_evictions_are_applied(seed: int) -> None:
    """Carrying out each Evict and asking again ends in Admit without a second eviction."""
    rng = random.Random(1000 + seed)
    for _ in range(300):
        servers = _random_pool(rng)
        need = rng.randint(0, 20)
        cap = rng.randint(need, 30)
        decision = plan_start("t", need, servers, cap)
        if isinstance(decision, Evict):
            gone = set(decision.victims)
            after = [sv(s.name, "stopped", s.need_bytes) if s.name in gone else s for s in servers]
            assert plan_start("t", need, after, cap) == Admit()


# --- next_step: the request decision tree, one test per numbered step ----------------------

NOW = 1000.0
LATER = NOW + 60  # a deadline still ahead


def step_for(
    target: ServerView,
    *others: ServerView,
    cap: int = 4 * GB,
    deadline: float = LATER,
    joined: int | None = None,
) -> object:
    view = View(target=target, servers=(target, *others), cap_bytes=cap)
    return next_step(view, Request(target.name, deadline, joined_attempt=joined), NOW)


def target(state: ServerState = "stopped", need: int = GB, **fields: object) -> ServerView:
    return replace(sv("t", state, need), **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("state", STATES)
def test_step1_a_removed_profile_fails_whatever_its_state(state: ServerState) -> None:
    step = step_for(target(state, removed=True))
    assert isinstance(step, Fail)
    assert step.reason == "removed"
    assert "'t' was removed" in step.message


def test_step2_a_ready_target_is_ready_even_past_the_deadline() -> None:
    assert step_for(target("ready"), deadline=NOW - 1) == Ready()


def test_step2_a_ready_target_is_ready_even_when_memory_is_over_the_cap() -> None:
    assert step_for(target("ready"), sv("big", need=10 * GB), cap=GB) == Ready()


@pytest.mark.parametrize("state", ["starting", "stopping"])
def test_step3a_a_finished_task_that_left_the_state_unsettled_fails(state: ServerState) -> None:
    step = step_for(target(state, transition_done=True, last_error="t: boom"))
    assert step == Fail("start_failed", "t: boom")
    unexplained = step_for(target(state, transition_done=True))
    assert unexplained == Fail("start_failed", "t: the start did not finish")


@pytest.mark.parametrize("state", ["starting", "stopping"])
def test_step3b_past_the_deadline_a_start_or_stop_under_way_is_a_queue_timeout(
    state: ServerState,
) -> None:
    step = step_for(target(state), deadline=NOW)
    assert isinstance(step, Fail)
    assert step.reason == "queue_timeout"
    assert f"still {state}" in step.message


@pytest.mark.parametrize("state", ["starting", "stopping"])
def test_step3c_a_start_or_stop_under_way_is_joined_with_its_attempt(state: ServerState) -> None:
    assert step_for(target(state, attempt=7)) == Join(attempt=7)


def test_step3c_joining_never_evicts_or_starts_even_when_memory_is_short() -> None:
    assert step_for(target("starting", attempt=1), sv("idle"), cap=GB) == Join(attempt=1)


def test_step4_the_start_this_request_waited_on_failed() -> None:
    failed = target("failed", attempt=3, last_error="t: exited with code 3")
    assert step_for(failed, joined=3) == Fail("start_failed", "t: exited with code 3")
    assert step_for(target("failed", attempt=3), joined=3) == Fail(
        "start_failed", "t: start failed"
    )


def test_step4_a_failure_of_an_earlier_start_is_retried() -> None:
    # A request that never joined that start (or joined an older one) tries again.
    failed = target("failed", attempt=3, last_error="t: exited")
    assert step_for(failed) == Start()
    assert step_for(failed, joined=2) == Start()


def test_step5a_a_target_over_the_whole_cap_fails_at_once() -> None:
    step = step_for(target(need=5 * GB), cap=4 * GB)
    assert isinstance(step, Fail)
    assert step.reason == "too_large"
    assert "needs 5.00 GB" in step.message
    assert "4.00 GB" in step.message


@pytest.mark.parametrize("state", ["stopped", "failed"])
def test_step5b_a_target_that_fits_starts(state: ServerState) -> None:
    assert step_for(target(state), sv("other", need=3 * GB)) == Start()


def test_step5c_idle_servers_in_the_way_are_evicted_lru_first() -> None:
    step = step_for(
        target(need=2 * GB),
        sv("old", need=GB, last_used=1),
        sv("new", need=GB, last_used=2),
        sv("busy", need=GB, inflight=1),
        sv("pinned", need=GB, pinned=True),
        cap=5 * GB,
    )
    assert step == Evict(victims=("old",))


def test_step5d_busy_servers_in_the_way_mean_wait_before_the_deadline() -> None:
    step = step_for(target(need=2 * GB), sv("busy", need=3 * GB, inflight=1))
    assert step == Wait(blockers=("busy",), shortfall_bytes=GB)


def test_step5d_past_the_deadline_waiting_for_memory_is_a_queue_timeout() -> None:
    step = step_for(target(need=2 * GB), sv("busy", need=3 * GB, inflight=1), deadline=NOW)
    assert isinstance(step, Fail)
    assert step.reason == "queue_timeout"
    assert "(busy)" in step.message
    assert "1.00 GB short" in step.message


def test_every_step_is_frozen() -> None:
    step = step_for(target("starting", attempt=1))
    with pytest.raises(AttributeError):
        step.attempt = 2  # type: ignore[attr-defined]


def failed_target(failed_at: float = NOW - 10) -> ServerView:
    return target("failed", attempt=2, last_error="t: exited with code 3", failed_at=failed_at)


def backoff_step(failed: ServerView, backoff: float, **request: object) -> object:
    view = View(target=failed, servers=(failed,), cap_bytes=4 * GB, start_failure_backoff=backoff)
    return next_step(view, Request("t", LATER, **request), NOW)  # type: ignore[arg-type]


def test_step4b_within_the_back_off_a_failed_start_fails_at_once_with_retry_in() -> None:
    assert backoff_step(failed_target(NOW - 10), 30) == Fail(
        "start_failed", "t: exited with code 3", retry_in=20
    )


def test_step4b_the_back_off_ends_exactly_at_its_length() -> None:
    assert backoff_step(failed_target(NOW - 30), 30) == Start()
    assert isinstance(backoff_step(failed_target(NOW - 29.5), 30), Fail)


def test_step4b_a_zero_back_off_retries_at_once() -> None:
    assert backoff_step(failed_target(NOW), 0) == Start()


def test_step4b_a_forced_start_ignores_the_back_off() -> None:
    assert backoff_step(failed_target(), 30, forced=True) == Start()


def test_step4b_a_failure_without_a_time_is_not_backed_off() -> None:
    assert backoff_step(target("failed", attempt=2), 30) == Start()


def test_step4a_comes_before_4b_and_has_no_retry_in() -> None:
    step = backoff_step(failed_target(), 30, joined_attempt=2, forced=True)
    assert step == Fail("start_failed", "t: exited with code 3")
