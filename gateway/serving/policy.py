"""What to do next for a request, and which servers to stop: decides, never acts.

Split as in llama-swap's router: this module is a set of pure functions over
snapshots (`ServerView`, `View`), and the effects layer (`gateway.serving.manager`)
does the starting, stopping and waiting. `next_step` is the whole request
decision tree (join, fail, start, evict, wait); `plan_start` is its memory part;
`expired` and `next_expiry` drive the idle reaper. Keeping the decision free of asyncio, I/O and
clocks (`now` is passed in) means every eviction rule can be tested
synchronously and exhaustively without processes or sleeps, and the caller can
run it inside a plain `def` on the event loop, where it is atomic without locks.

The caller must act on a fresh snapshot: a decision is only valid for the state
it was computed from, so after carrying out an `Evict` (or when a `Wait` ends)
it asks again rather than reusing an older answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

from gateway.types import ALIVE, GIB, ServerState

__all__ = [
    "Admit",
    "Decision",
    "Evict",
    "Fail",
    "FailReason",
    "Join",
    "NeverFits",
    "Ready",
    "Request",
    "ServerState",
    "ServerView",
    "Start",
    "Step",
    "View",
    "Wait",
    "expired",
    "next_expiry",
    "next_step",
    "plan_start",
    "resident_bytes",
]


@dataclass(frozen=True, slots=True)
class ServerView:
    """A snapshot of one profile's server, as the policy needs it."""

    name: str
    state: ServerState
    need_bytes: int  # memory held (or to be held): already max(estimate, measured)
    inflight: int = 0  # requests/open streams in flight
    pinned: bool = False
    last_used: float = 0.0  # monotonic seconds; end of the last request (or start time)
    idle_ttl: float = 0.0  # seconds; 0 = never expires
    # What the request decision tree needs to know about its target besides the above.
    removed: bool = False  # the profile was deleted while requests waited for it
    attempt: int = 0  # how many starts were begun: names the latest one
    transition_done: bool = False  # the start or stop task under way has finished
    last_error: str | None = None
    failed_at: float | None = None  # monotonic seconds: when the latest start failed


@dataclass(frozen=True, slots=True)
class Admit:
    """The target fits now: start it."""


@dataclass(frozen=True, slots=True)
class Evict:
    """Stop these idle servers (least recently used first), then ask again.

    Only the minimal prefix is named, so no warm server is lost beyond what the
    target needs.
    """

    victims: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Wait:
    """Not enough can be freed now; nothing should be evicted yet.

    The blockers (busy, pinned, starting or stopping) may free memory on their
    own; evicting idle servers before that would lose them for nothing.
    """

    blockers: tuple[str, ...]
    shortfall_bytes: int  # still missing even after evicting every candidate


@dataclass(frozen=True, slots=True)
class NeverFits:
    """The target exceeds the whole cap: fail at once instead of queueing forever."""

    need_bytes: int
    cap_bytes: int


Decision: TypeAlias = Admit | Evict | Wait | NeverFits


def resident_bytes(servers: Iterable[ServerView]) -> int:
    """Memory held by servers whose process exists (stopped/failed hold nothing)."""
    return sum(s.need_bytes for s in servers if s.state in ALIVE)


def _is_idle(s: ServerView) -> bool:
    # The one rule for "may be stopped without harming anyone": shared by
    # eviction and TTL expiry so the two can never disagree.
    return s.state == "ready" and s.inflight == 0 and not s.pinned


def _lru_key(s: ServerView) -> tuple[float, str]:
    # The name breaks ties so equal timestamps give the same answer every time.
    return (s.last_used, s.name)


def plan_start(
    target: str, need_bytes: int, servers: Sequence[ServerView], cap_bytes: int
) -> Decision:
    """Decide whether `target` (needing `need_bytes`) can start under `cap_bytes`.

    The target's own entry, if present, is ignored: whatever state it is in, the
    caller is asking to (re)start it, so it is neither resident nor a victim.
    """
    if need_bytes < 0 or cap_bytes < 0:
        raise ValueError(f"need_bytes and cap_bytes must be >= 0, got {need_bytes}, {cap_bytes}")
    if need_bytes > cap_bytes:
        return NeverFits(need_bytes=need_bytes, cap_bytes=cap_bytes)

    others = [s for s in servers if s.name != target]
    resident = resident_bytes(others)
    if resident + need_bytes <= cap_bytes:
        return Admit()

    # Memory already on its way out counts as freed: when the stops under way are enough,
    # wait for them instead of evicting more (else each re-plan would claim one more victim).
    stopping = sum(s.need_bytes for s in others if s.state == "stopping")
    if resident - stopping + need_bytes <= cap_bytes:
        return Wait(
            blockers=tuple(sorted(s.name for s in others if s.state == "stopping")),
            shortfall_bytes=resident + need_bytes - cap_bytes,
        )

    candidates = sorted((s for s in others if _is_idle(s)), key=_lru_key)
    freed = 0
    for i, s in enumerate(candidates):
        freed += s.need_bytes
        if resident - freed + need_bytes <= cap_bytes:
            return Evict(victims=tuple(c.name for c in candidates[: i + 1]))

    blockers = sorted(s.name for s in others if s.state in ALIVE and not _is_idle(s))
    return Wait(
        blockers=tuple(blockers),
        shortfall_bytes=resident - freed + need_bytes - cap_bytes,
    )


def _eligible_for_ttl(s: ServerView) -> bool:
    # Pinned means "never stopped by the gateway's own choice", TTL included.
    return _is_idle(s) and s.idle_ttl > 0


def _remaining(s: ServerView, now: float) -> float:
    # Written as ttl - idle so that `expired` (remaining <= 0) and
    # `next_expiry` (clamped remaining) agree exactly at the boundary.
    return s.idle_ttl - (now - s.last_used)


def expired(servers: Iterable[ServerView], now: float) -> list[str]:
    """Servers idle for at least their TTL, oldest first, so stops go in LRU order."""
    due = [s for s in servers if _eligible_for_ttl(s) and _remaining(s, now) <= 0]
    return [s.name for s in sorted(due, key=_lru_key)]


def next_expiry(servers: Iterable[ServerView], now: float) -> float | None:
    """Seconds until the earliest TTL expiry (0 if one is due), None if none can expire.

    Lets the caller sleep exactly as long as needed instead of polling.
    """
    remaining = [_remaining(s, now) for s in servers if _eligible_for_ttl(s)]
    if not remaining:
        return None
    return max(0.0, min(remaining))


# ---- the request decision tree -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class View:
    """Everything `next_step` reads: the target, every server, the memory cap."""

    target: ServerView
    servers: tuple[ServerView, ...]  # the target may be among them (it is ignored there)
    cap_bytes: int
    start_failure_backoff: float = 0.0  # seconds a failed start is not retried; 0 = off


@dataclass(frozen=True, slots=True)
class Request:
    """One caller waiting for `target` to be ready, as far as the policy cares."""

    target: str
    deadline: float  # monotonic seconds; past it, waiting ends in a queue timeout
    joined_attempt: int | None = None  # the start attempt this caller has waited on
    forced: bool = False  # an explicit start: tries again even during the back-off


@dataclass(frozen=True, slots=True)
class Ready:
    """The target is ready: grant it (with no await before the grant)."""


@dataclass(frozen=True, slots=True)
class Join:
    """A start or stop of the target is under way: wait for it (until the deadline)."""

    attempt: int  # remember it, so a failure of this very start is reported, not retried


@dataclass(frozen=True, slots=True)
class Start:
    """The target fits: begin its start."""


FailReason: TypeAlias = Literal["removed", "start_failed", "too_large", "queue_timeout"]


@dataclass(frozen=True, slots=True)
class Fail:
    """Give up with this error; `message` says what happened and what to do next."""

    reason: FailReason
    message: str
    retry_in: float | None = None  # a failed start in its back-off: seconds until it is retried


Step: TypeAlias = Ready | Join | Start | Evict | Wait | Fail


def next_step(view: View, request: Request, now: float) -> Step:
    """The next thing to do for `request`; the caller performs it and asks again.

    1. The profile was removed: fail (`removed`).
    2. The target is ready: `Ready`.
    3. A start or stop is under way:
       3a. its task has ended without settling the state: fail (`start_failed`);
       3b. the deadline has passed: fail (`queue_timeout`), the start goes on;
       3c. otherwise `Join` it.
    4. The last start failed:
       4a. it is the one this request waited on: fail (`start_failed`) with its error;
       4b. it failed less than `start_failure_backoff` seconds ago and the request does not
           force a start: fail (`start_failed`) at once with that error and `retry_in`, so
           clients retrying a hopeless start do not relaunch it each time.
    5. Memory (`plan_start`):
       5a. the target can never fit under the cap: fail (`too_large`);
       5b. it fits: `Start`;
       5c. idle servers are in the way: `Evict` them (least recently used first);
       5d. only busy (or stopping) servers are in the way: `Wait` for a change, or fail
           (`queue_timeout`) once the deadline has passed.
    """
    target = view.target
    name = target.name
    # 1. removed
    if target.removed:
        return Fail("removed", f"the model {name!r} was removed")
    # 2. ready
    if target.state == "ready":
        return Ready()
    # 3. a start or stop under way
    if target.state in ("starting", "stopping"):
        if target.transition_done:  # 3a
            return Fail("start_failed", target.last_error or f"{name}: the start did not finish")
        if now >= request.deadline:  # 3b
            return Fail(
                "queue_timeout",
                f"model {name!r} is still {target.state}; it keeps going in the background, "
                "try again shortly",
            )
        return Join(attempt=target.attempt)  # 3c
    # 4. the last start failed
    if target.state == "failed":
        error = target.last_error or f"{name}: start failed"
        if request.joined_attempt == target.attempt:  # 4a
            return Fail("start_failed", error)
        if not request.forced and target.failed_at is not None:  # 4b
            retry_in = view.start_failure_backoff - (now - target.failed_at)
            if retry_in > 0:
                return Fail("start_failed", error, retry_in=retry_in)
    # 5. memory
    decision = plan_start(name, target.need_bytes, view.servers, view.cap_bytes)
    if isinstance(decision, NeverFits):  # 5a
        return Fail(
            "too_large",
            f"model {name!r} needs {decision.need_bytes / GIB:.2f} GB but the memory cap for "
            f"all model servers is {decision.cap_bytes / GIB:.2f} GB; raise "
            "MLX_MANAGER_MAX_MEMORY_GB (or _PERCENT) or lower the profile's memory_gb",
        )
    if isinstance(decision, Admit):  # 5b
        return Start()
    if isinstance(decision, Evict):  # 5c
        return decision
    if now >= request.deadline:  # 5d
        return Fail(
            "queue_timeout",
            f"model {name!r} is waiting for memory held by busy servers "
            f"({', '.join(decision.blockers)}); "
            f"{decision.shortfall_bytes / GIB:.2f} GB short; try again shortly",
        )
    return decision
