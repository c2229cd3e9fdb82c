"""Passwords and tokens (pure, apart from the system's random source).

Passwords are argon2id hashes (argon2-cffi's defaults). Tokens are 256 random bits, so a
plain SHA-256 of a token is as good as a slow hash and lets the database find a token by
its hash: only the hash is stored, the token is shown once. A prefix says which kind a
token is, so one pasted in the wrong place (or found in a log) is recognised.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from damselfly.manager.access import PERSONAL, SESSION

TOKEN_PREFIXES = {SESSION: "dfs_", PERSONAL: "dfp_"}
_HASHER = PasswordHasher()
# Verified against when the name is unknown, so that a wrong name costs as long as a
# wrong password and the timing does not tell which names exist.
_DECOY_HASH = _HASHER.hash("damselfly decoy password")


def new_token(kind: str) -> str:
    """A fresh token of ``kind`` (SESSION or PERSONAL)."""
    return TOKEN_PREFIXES[kind] + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What the database keeps of a token, and looks it up by."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches ``stored_hash`` (None: an unknown user, never matches)."""
    try:
        _HASHER.verify(stored_hash or _DECOY_HASH, password.encode("utf-8", "surrogatepass"))
    except (VerificationError, InvalidHashError):
        return False
    return stored_hash is not None


def random_password() -> str:
    """The first root password when none is given: 24 characters, printed once."""
    return secrets.token_urlsafe(18)


def is_expired(expires_at: datetime, now: datetime) -> bool:
    return now >= expires_at


def session_expiry(now: datetime, ttl_seconds: float) -> datetime:
    return now + timedelta(seconds=ttl_seconds)
