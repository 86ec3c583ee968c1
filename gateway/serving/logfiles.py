"""One log file per model server, size-capped by copy-and-truncate rotation.

The child writes straight into the file (O_APPEND), so the gateway spends no CPU relaying
logs and a gateway crash cannot wedge a child on a full pipe. Rotation copies the file to
`.1` (shifting older ones) and truncates it in place; O_APPEND makes the child carry on at the
new end, as logrotate's copytruncate does.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colour codes servers print even into files


def file_stem(profile_name: str) -> str:
    """The name a profile's files take on disk (its log, its prompt-cache folder)."""
    return _UNSAFE.sub("_", profile_name).strip("._") or "server"


def name_clash(profile_name: str, others: Iterable[str]) -> str | None:
    """The first of `others` whose files would be `profile_name`'s, else None.

    Two names that differ only in what `file_stem` replaces (`a/b`, `a_b`) would share a log
    and a prompt cache (deleting one profile would delete the other's cache), so profile names
    must not clash. Compared without case: macOS's file system ignores it.
    """
    stem = file_stem(profile_name).casefold()
    return next((other for other in others if file_stem(other).casefold() == stem), None)


def log_path(logs_dir: Path, profile_name: str) -> Path:
    return logs_dir / f"{file_stem(profile_name)}.log"


def open_for_child(path: Path) -> int:
    """An O_APPEND descriptor to hand to the child as stdout and stderr."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


def rotate_if_large(path: Path, max_bytes: int, backups: int) -> bool:
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    if backups > 0:
        for index in range(backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{index}")
            if older.exists():
                older.replace(path.with_name(f"{path.name}.{index + 1}"))
        shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    with open(path, "r+b") as handle:
        handle.truncate(0)
    return True


def tail(path: Path, lines: int, max_bytes: int = 1024 * 1024) -> str:
    """The last `lines` lines, reading at most `max_bytes` from the end."""
    if lines <= 0:
        return ""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except FileNotFoundError:
        return ""
    text = _ANSI.sub("", data.decode("utf-8", errors="replace"))
    return "\n".join(text.splitlines()[-lines:])


def mark(path: Path, message: str) -> None:
    """A gateway line in the server's log, so the log tells the whole story of a start."""
    fd = open_for_child(path)
    try:
        os.write(fd, f"[mlx-manager] {message}\n".encode())
    finally:
        os.close(fd)
