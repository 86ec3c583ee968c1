"""Password hashing with Argon2id (pwdlib), and the policy for acceptable passwords."""

from __future__ import annotations

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

MIN_PASSWORD_LENGTH = 8
# Argon2 hashes any length, but an unbounded input is a cheap way to burn our CPU.
MAX_PASSWORD_LENGTH = 1024

_hasher = PasswordHash((Argon2Hasher(),))
# Verified against when the email is unknown, so both paths cost one Argon2 run (no enumeration).
_DUMMY_HASH = _hasher.hash("dummy-password-for-timing")


def check_password_policy(password: str) -> str | None:
    """The reason a password is refused, or None when it is acceptable."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"password must be at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"password must be at most {MAX_PASSWORD_LENGTH} characters"
    return None


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, password_hash: str | None) -> tuple[bool, str | None]:
    """(valid, new_hash): new_hash is set when the stored hash uses outdated parameters."""
    if password_hash is None:
        _hasher.verify(password, _DUMMY_HASH)
        return False, None
    try:
        return _hasher.verify_and_update(password, password_hash)
    except Exception:  # a corrupt or foreign hash must deny, never crash the login
        return False, None
