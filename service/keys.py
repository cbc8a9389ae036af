"""API keys: ``ntk_<id>_<secret>`` bearer tokens; only the SHA-256 of the secret is stored.

The secret is 256 random bits, so a fast hash is enough (no password stretching needed) and
lookup is by the public id.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from .db import ApiKey, Database

PREFIX = "ntk"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(db: Database, name: str = "") -> str:
    """Make a key; returns the token (shown once, never stored)."""
    kid, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    with db.session() as s:
        s.add(ApiKey(id=kid, secret_hash=_hash(secret), name=name))
    return f"{PREFIX}_{kid}_{secret}"


def verify(db: Database, token: str) -> str | None:
    """The key id a token belongs to, or None."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX:
        return None
    with db.session() as s:
        row = s.get(ApiKey, parts[1])
        if row is None or not hmac.compare_digest(row.secret_hash, _hash(parts[2])):
            return None
        return row.id


def ensure_keys(db: Database, tokens: str) -> int:
    """Register pre-made tokens (comma separated, e.g. from a Kubernetes Secret through
    ``NTK_API_KEYS``) that are not yet known; returns how many were added."""
    added = 0
    for token in filter(None, (t.strip() for t in tokens.split(","))):
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or len(parts[2]) < 16:
            raise ValueError("NTK_API_KEYS: each key must look like ntk_<id>_<secret of 16+ "
                             "characters> (as `ntk keys create` prints)")
        with db.session() as s:
            if s.get(ApiKey, parts[1]) is None:
                s.add(ApiKey(id=parts[1], secret_hash=_hash(parts[2]), name="NTK_API_KEYS"))
                added += 1
    return added
