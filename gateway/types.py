"""The shared vocabulary: names every layer uses, spelled once.

Like Starlette's ``types.py``: no behaviour, only the words. Server states, the states in which a
process exists, the kinds of model a profile can serve, and the units and timestamp format that
the API speaks. The admin page reads the kinds from ``GET /api/system/info`` instead of keeping
its own copy.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final, Literal, get_args

ServerState = Literal["stopped", "starting", "ready", "stopping", "failed"]
SERVER_STATES: Final[tuple[ServerState, ...]] = get_args(ServerState)

# A process exists (and holds memory, a port and a pid) in these states; a stopping process
# still holds its memory until it has exited, so admission counts it too.
ALIVE: Final[frozenset[ServerState]] = frozenset({"starting", "ready", "stopping"})
# Started or being started: what "running" means to a person looking at the list.
RUNNING: Final[frozenset[ServerState]] = frozenset({"starting", "ready"})

ModelType = Literal["lm", "multimodal", "embeddings", "whisper", "image-generation", "image-edit"]
MODEL_TYPES: Final[tuple[ModelType, ...]] = get_args(ModelType)

# What an API key may call: `inference` is /v1 (the OpenAI API), `admin` is /api (the
# management API, with its owner's rights). New keys get inference only, so a key handed to an
# SDK or a notebook cannot manage users or profiles even when an admin created it.
KeyScope = Literal["inference", "admin"]
KEY_SCOPES: Final[tuple[KeyScope, ...]] = get_args(KeyScope)
DEFAULT_KEY_SCOPES: Final[tuple[KeyScope, ...]] = ("inference",)

GIB: Final = 1024**3


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso_utc(value: datetime | float | None) -> str | None:
    """One timestamp format everywhere: ISO 8601 in UTC with its offset.

    SQLite hands timestamps back without a zone; they were written in UTC, so say so. A float
    is a POSIX timestamp (file times).
    """
    if value is None:
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).isoformat()
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()
