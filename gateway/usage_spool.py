"""The usage write-ahead spool: every usage record is on local disk before its response ends.

Each gateway process appends one JSON line per record to its own segment file,
`HOME/usage-spool/<host>-<pid>-<start ms>-<seq>.jsonl`, with a plain `os.write` on an unbuffered
descriptor. No fsync, on purpose: a SIGKILLed (or crashed, or OOM-killed) process loses nothing
that `write(2)` returned for, because the data is in the kernel's page cache, not the process;
only a power loss or kernel crash can lose the last few seconds, as for the database's own
`synchronous_commit=off` setups. One `write(2)` of ~300 bytes per request is what the request path
pays (measured in tests/bench/proxy_bench.py: within the run-to-run noise).

The recorder (gateway/usage.py) commits closed segments to the database and only then deletes
them. A segment left behind by a gateway process of this machine that is gone (pid *and* process
start time no longer match, so a reused pid or a live replica on the same HOME is never taken)
is adopted: renamed into this process's name, then committed like its own. Rows carry their own
`record_id`, so committing a segment twice (a crash between commit and delete) doubles nothing.

Owner-only and single-threaded: the event loop appends and rotates (no await in either); only
reading a closed segment runs in a worker thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from gateway.serving.process import recorded_process
from gateway.settings import make_private_dir

log = logging.getLogger("mlx_manager.usage")

SPOOL_DIR = "usage-spool"
REJECTED_DIR = "rejected"  # rows the database refused as invalid: kept for the operator
SUFFIX = ".jsonl"
_UNSAFE = re.compile(r"[^A-Za-z0-9._]")


@dataclass(frozen=True, slots=True)
class SpoolOwner:
    """Which gateway process wrote a segment: the file name says, so no database is needed."""

    host: str
    pid: int
    start_ms: int  # the process start time, in ms since the epoch

    @classmethod
    def current(cls) -> SpoolOwner:
        start = psutil.Process().create_time()
        return cls(_UNSAFE.sub("_", socket.gethostname()) or "host", os.getpid(), int(start * 1000))

    def segment_name(self, seq: int) -> str:
        return f"{self.host}-{self.pid}-{self.start_ms}-{seq:08d}{SUFFIX}"

    def alive(self) -> bool:
        """Whether this process still runs (same pid and the same start time)."""
        return recorded_process(self.pid, self.start_ms / 1000) is not None


def parse_segment_name(name: str) -> tuple[SpoolOwner, int] | None:
    """(owner, sequence number) of a segment file name; None for anything else."""
    if not name.endswith(SUFFIX):
        return None
    parts = name[: -len(SUFFIX)].rsplit("-", 3)
    if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]) or not parts[0]:
        return None
    return SpoolOwner(parts[0], int(parts[1]), int(parts[2])), int(parts[3])


@dataclass(slots=True)
class Segment:
    """One spool file. `size` is what it holds; `done` how many of its bytes, from the start,
    are committed (a large segment is committed in batches, and a failed batch resumes there)."""

    path: Path
    size: int = 0
    done: int = 0


class UsageSpool:
    """This process's spool: the segment being appended to, and closed ones awaiting commit."""

    def __init__(self, home: Path, max_bytes: int, owner: SpoolOwner | None = None) -> None:
        self.directory = home / SPOOL_DIR
        self.max_bytes = max_bytes
        self.owner = owner or SpoolOwner.current()
        self.closed: list[Segment] = []
        self._current: Segment | None = None
        self._fd = -1
        self._seq = 0
        # Records that could not be written (disk full, I/O error): kept here until committed,
        # and while there are any, the spool counts as full (new requests are refused).
        self.unwritten: list[bytes] = []

    # ---- state --------------------------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        """What the spool holds and the database does not have yet (this process's files)."""
        current = self._current.size if self._current is not None else 0
        pending = sum(segment.size - segment.done for segment in self.closed)
        return current + pending

    @property
    def full(self) -> bool:
        return self.pending_bytes >= self.max_bytes or bool(self.unwritten)

    # ---- writing (the event loop; no await) ---------------------------------------------------

    def open(self) -> None:
        make_private_dir(self.directory)
        self._open_segment()

    def _open_segment(self) -> None:
        while True:
            self._seq += 1
            path = self.directory / self.owner.segment_name(self._seq)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            except FileExistsError:  # an adopted segment took this number
                continue
            self._fd, self._current = fd, Segment(path)
            return

    def append(self, line: bytes) -> None:
        """Write one record (a JSON line) to the current segment before returning."""
        if self._current is None:
            self.unwritten.append(line)
            return
        try:
            written = os.write(self._fd, line)
            while written < len(line):  # regular files write whole; be exact anyway
                written += os.write(self._fd, line[written:])
        except OSError as exc:
            self.unwritten.append(line)
            if len(self.unwritten) == 1:
                log.error(
                    "cannot write the usage spool %s (%s): records kept in memory until the "
                    "database has them; /v1 requests are refused until the spool is writable",
                    self._current.path,
                    exc,
                )
            return
        self._current.size += written

    def rotate(self) -> None:
        """Close the current segment (if it holds anything) for commit; start a new one."""
        current = self._current
        if current is not None and current.size == 0 and not self.unwritten:
            return
        self._close_fd()
        if current is not None:
            if current.size:
                self.closed.append(current)
            else:
                with contextlib.suppress(OSError):
                    current.path.unlink()
        self._current = None
        try:
            self._open_segment()
        except OSError as exc:
            log.error("cannot open a new usage spool segment in %s: %s", self.directory, exc)

    def _close_fd(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        """Stop appending; an empty current segment goes, one with records stays for the next
        gateway start to commit."""
        current = self._current
        self._close_fd()
        self._current = None
        if current is not None and current.size == 0:
            with contextlib.suppress(OSError):
                current.path.unlink()

    # ---- committing ---------------------------------------------------------------------------

    def committed(self, segment: Segment, upto: int) -> None:
        """The database has `segment`'s records up to byte `upto`; a fully committed segment is
        deleted."""
        segment.done = upto
        if upto >= segment.size:
            with contextlib.suppress(FileNotFoundError):
                segment.path.unlink()
            self.closed.remove(segment)

    def reject(self, segment: Segment, lines: list[bytes]) -> Path:
        """Keep records the database refused as invalid (never retried) where an operator can
        read them."""
        folder = self.directory / REJECTED_DIR
        make_private_dir(folder)
        path = folder / segment.path.name
        with path.open("ab") as out:
            out.writelines(lines)
        return path

    def dead_segments(self) -> list[str]:
        """Names of segments whose writer, a gateway process of this machine, is gone.
        Reads the folder and /proc: the recorder calls it in a worker thread."""
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        dead: list[str] = []
        for name in names:
            parsed = parse_segment_name(name)
            if parsed is None:
                continue
            owner, _ = parsed
            if owner.host == self.owner.host and owner != self.owner and not owner.alive():
                dead.append(name)
        return dead

    def adopt(self, names: list[str]) -> list[Segment]:
        """Take over dead writers' segments (see `dead_segments`) to commit them as ours.

        Renaming is atomic: two gateways adopting together cannot both take one file (the
        loser's rename fails and it skips the file). Runs on the event loop, as `rotate`
        does, so the two never pick the same new name.
        """
        adopted: list[Segment] = []
        for name in names:
            parsed = parse_segment_name(name)
            self._seq += 1
            target = self.directory / self.owner.segment_name(self._seq)
            try:
                os.rename(self.directory / name, target)
                size = target.stat().st_size
            except FileNotFoundError:
                continue  # another gateway adopted it first
            if size == 0:
                target.unlink(missing_ok=True)
                continue
            segment = Segment(target, size)
            self.closed.append(segment)
            adopted.append(segment)
            log.warning(
                "adopted %d bytes of usage records spooled by gateway pid %s, which is gone",
                size,
                parsed[0].pid if parsed else "?",
            )
        return adopted

    def adopt_dead(self) -> list[Segment]:
        return self.adopt(self.dead_segments())


def read_lines(segment: Segment, max_records: int) -> tuple[list[bytes], int]:
    """Up to `max_records` complete lines of `segment` from its `done` offset, and the offset
    after them. Blocking file I/O: the recorder calls it in a worker thread."""
    lines: list[bytes] = []
    with segment.path.open("rb") as source:
        source.seek(segment.done)
        offset = segment.done
        while len(lines) < max_records and offset < segment.size:
            line = source.readline()
            if not line:
                break
            offset += len(line)
            lines.append(line)
    return lines, offset


def decode(lines: list[bytes], where: object) -> Iterator[dict[str, Any]]:
    """Records from spool lines. A line cut short (the machine lost power mid-write) or
    otherwise unreadable cannot be committed: it is logged and skipped."""
    for line in lines:
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("record_id"), str):
                raise ValueError("not a usage record")
        except ValueError as exc:
            log.error("skipping an unreadable usage spool line in %s (%s): %r", where, exc, line)
            continue
        yield record
