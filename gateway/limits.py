"""Per-key and per-user limits, decided: which windows a request falls in, which limit binds,
what the caller is told and how long it waits.

Pure (no I/O, no clock of its own: `now` is passed in), so every rule is tested synchronously
with plain values; `gateway/limiter.py` keeps the counters (in memory on SQLite, in PostgreSQL
for replicas) and asks this module what they mean.

The rules:
- A key and its owner each may have `rpm` (requests per minute), `tpm` (tokens per minute) and
  a `token_budget` per `budget_period` (a UTC day or month). All apply; the tightest binds.
- Windows are fixed and aligned (a UTC minute, day or month), named as `rate_windows` stores
  them: "minute:<unix minute>", "day:YYYY-MM-DD", "month:YYYY-MM".
- A request is admitted when, counted before it, every window is under its limit: fewer
  requests than `rpm`, fewer tokens than `tpm` and the budget. Admission counts the request;
  its tokens are only known when the answer ends, and are added then (so one request may take
  a window past its token limit, and the next one waits).
- Refused: 429, the limit that frees up last is named (waiting for an earlier one would not
  help), and Retry-After is the whole seconds until its window ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, get_args

BudgetPeriod = Literal["day", "month"]
BUDGET_PERIODS: Final[tuple[BudgetPeriod, ...]] = get_args(BudgetPeriod)
DEFAULT_BUDGET_PERIOD: Final[BudgetPeriod] = "month"
LimitKind = Literal["requests", "tokens"]
SubjectKind = Literal["key", "user"]
# (subject, window): one row of `rate_windows`.
Row = tuple[str, str]
# The columns keys and users keep their limits in (all nullable: None = unlimited).
LIMIT_FIELDS: Final[tuple[str, ...]] = ("rpm", "tpm", "token_budget", "budget_period")


@dataclass(frozen=True, slots=True)
class Limits:
    """One key's or user's limits; None = unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    token_budget: int | None = None
    budget_period: BudgetPeriod = DEFAULT_BUDGET_PERIOD

    @classmethod
    def of(cls, row: Any) -> Limits | None:
        """The limits stored on an `ApiKey` or `User` row, or None when it has none, so an
        unlimited caller carries nothing and costs nothing per request."""
        rpm, tpm, budget = row.rpm, row.tpm, row.token_budget
        if rpm is None and tpm is None and budget is None:
            return None
        period = row.budget_period if row.budget_period in BUDGET_PERIODS else None
        return cls(rpm, tpm, budget, period or DEFAULT_BUDGET_PERIOD)

    @property
    def counts_tokens(self) -> bool:
        return self.tpm is not None or self.token_budget is not None


@dataclass(frozen=True, slots=True)
class Counts:
    """What a row holds: requests admitted and tokens used in its window."""

    requests: int = 0
    tokens: int = 0


@dataclass(frozen=True, slots=True)
class Check:
    """One limit applied to one request: `limit` of `kind` in the row (subject, window)."""

    subject: str
    window: str
    kind: LimitKind
    limit: int
    name: str  # what the limit is called in messages and in /api/usage: "rpm", "tpm", "budget"

    @property
    def row(self) -> Row:
        return (self.subject, self.window)

    @property
    def resets_at(self) -> float:
        return window_end(self.window)


def subject(kind: SubjectKind, ident: int) -> str:
    return f"{kind}:{ident}"


def minute_window(now: float) -> str:
    return f"minute:{int(now // 60)}"


def period_window(period: BudgetPeriod, now: float) -> str:
    moment = datetime.fromtimestamp(now, UTC)
    if period == "day":
        return f"day:{moment:%Y-%m-%d}"
    return f"month:{moment:%Y-%m}"


def window_end(window: str) -> float:
    """When a window ends (unix seconds): the next minute, UTC midnight or first of a month."""
    kind, _, value = window.partition(":")
    if kind == "minute":
        return (int(value) + 1) * 60.0
    if kind == "day":
        day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
        return day.timestamp() + 86400.0
    if kind == "month":
        year, month = (int(part) for part in value.split("-"))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        return datetime(year, month, 1, tzinfo=UTC).timestamp()
    raise ValueError(f"not a rate window: {window!r}")


def checks_for(who: str, limits: Limits | None, now: float) -> list[Check]:
    """The limits of one subject ("key:3", "user:7") that a request at `now` must pass."""
    if limits is None:
        return []
    found: list[Check] = []
    minute = minute_window(now)
    if limits.rpm is not None:
        found.append(Check(who, minute, "requests", limits.rpm, "rpm"))
    if limits.tpm is not None:
        found.append(Check(who, minute, "tokens", limits.tpm, "tpm"))
    if limits.token_budget is not None:
        window = period_window(limits.budget_period, now)
        found.append(Check(who, window, "tokens", limits.token_budget, "budget"))
    return found


def request_checks(
    key_id: int | None,
    key_limits: Limits | None,
    user_id: int,
    user_limits: Limits | None,
    now: float,
) -> list[Check]:
    """Every limit a request by this key (or signed-in user) passes: the key's and its owner's."""
    found = [] if key_id is None else checks_for(subject("key", key_id), key_limits, now)
    return found + checks_for(subject("user", user_id), user_limits, now)


def admission_rows(checks: Iterable[Check]) -> list[tuple[Row, int | None]]:
    """The rows an admission reads, in one global order (so concurrent admissions that lock
    rows in PostgreSQL always lock them in the same order and never deadlock), each with its
    request limit when the row counts requests (None: the row is only read for its tokens)."""
    rows: dict[Row, int | None] = {}
    for check in checks:
        current = rows.get(check.row)
        if check.kind == "requests":
            rows[check.row] = check.limit if current is None else min(current, check.limit)
        else:
            rows.setdefault(check.row, None)
    return sorted(rows.items())


def token_rows(checks: Iterable[Check]) -> list[Row]:
    """The rows a finished request's tokens are added to."""
    return sorted({check.row for check in checks if check.kind == "tokens"})


def used(check: Check, counts: Counts) -> int:
    return counts.requests if check.kind == "requests" else counts.tokens


@dataclass(frozen=True, slots=True)
class Decision:
    """An admission: the checks, the counts before this request, and the limit that refused
    it (None: admitted)."""

    now: float
    checks: tuple[Check, ...] = ()
    before: Mapping[Row, Counts] = field(default_factory=dict)
    denied: Check | None = None

    @property
    def admitted(self) -> bool:
        return self.denied is None

    def used(self, check: Check) -> int:
        return used(check, self.before.get(check.row, Counts()))

    def remaining(self, check: Check) -> int:
        """What is left in the check's window once this request is counted (if admitted)."""
        spent = 1 if check.kind == "requests" and self.admitted else 0
        return max(0, check.limit - self.used(check) - spent)

    def retry_after(self) -> int:
        """Whole seconds until the binding window ends, at least 1."""
        assert self.denied is not None
        return max(1, -int(-(self.denied.resets_at - self.now) // 1))

    def headers(self) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers for the tightest request and token limit."""
        out: dict[str, str] = {}
        for kind in ("requests", "tokens"):
            of_kind = [check for check in self.checks if check.kind == kind]
            if not of_kind:
                continue
            tightest = min(of_kind, key=lambda c: (self.remaining(c), -c.resets_at))
            out[f"x-ratelimit-limit-{kind}"] = str(tightest.limit)
            out[f"x-ratelimit-remaining-{kind}"] = str(self.remaining(tightest))
            out[f"x-ratelimit-reset-{kind}"] = duration(tightest.resets_at - self.now)
        if self.denied is not None:
            out["retry-after"] = str(self.retry_after())
        return out

    def message(self) -> str:
        """What OpenAI says ("Rate limit reached for ... Limit, Used, Requested"), plus where
        the limit is set."""
        check = self.denied
        assert check is not None
        kind, _, ident = check.subject.partition(":")
        if kind == "key":
            owner, where = (
                f"API key {ident}",
                f"its owner or an admin sets it: PATCH /api/keys/{ident}",
            )
        else:
            owner = f"user {ident}"
            where = f"an admin sets it: PATCH /api/users/{ident}"
        requested = ", Requested 1" if check.kind == "requests" else ""
        reset = datetime.fromtimestamp(check.resets_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return (
            f"Rate limit reached for {limit_name(check)} on {owner}: "
            f"Limit {check.limit}, Used {self.used(check)}{requested}. "
            f"Please try again in {duration(check.resets_at - self.now)} (the limit resets "
            f"at {reset}; {where})."
        )


LIMIT_NAMES: Final[dict[str, str]] = {
    "rpm": "requests per minute (RPM)",
    "tpm": "tokens per minute (TPM)",
}


def limit_name(check: Check) -> str:
    """ "requests per minute (RPM)", "tokens per minute (TPM)", "the token budget per day"."""
    if check.name in LIMIT_NAMES:
        return LIMIT_NAMES[check.name]
    return f"the token budget per {check.window.partition(':')[0]} (token_budget)"


def decide(checks: Sequence[Check], before: Mapping[Row, Counts], now: float) -> Decision:
    """Admit when every check is under its limit, counted before this request; otherwise name
    the exceeded limit whose window ends last (the caller must wait for all of them)."""
    exceeded = [
        check for check in checks if used(check, before.get(check.row, Counts())) >= check.limit
    ]
    denied = max(exceeded, key=lambda c: (c.resets_at, c.kind == "tokens")) if exceeded else None
    return Decision(now=now, checks=tuple(checks), before=dict(before), denied=denied)


def duration(seconds: float) -> str:
    """A wait as OpenAI writes it in x-ratelimit-reset-*: "250ms", "42s", "1m30s", "20h0m5s"."""
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    whole = -int(-seconds // 1)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
