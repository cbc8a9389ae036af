"""API keys: ``ntk_<id>_<secret>`` bearer tokens; only the SHA-256 of the secret is stored.

The secret is 256 random bits, so a fast hash is enough (no password stretching needed) and
lookup is by the public id. A key can be revoked (for good), rotated (a new secret under the
same id; the old one stops working at once) and given an expiry time.

Keys come from ``ntk keys create`` (source ``"cli"``) or from ``NTK_API_KEYS`` at service start
(source ``"env"``); a listed id whose secret changed there is re-keyed, which is how a key is
rotated through a Kubernetes Secret. Revocation wins over the environment: a revoked id is
never brought back by ``NTK_API_KEYS``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from datetime import datetime, timezone
from typing import Any

from ntkcompute.errors import InputError

from .db import ApiKey, Database

PREFIX = "ntk"
log = logging.getLogger("ntkcompute.service")

#: compared against when the id is unknown, so that path costs the same hash and comparison
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _split(token: str) -> tuple[str, str] | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1]:
        return None
    return parts[1], parts[2]


def _status(row: ApiKey, now: float) -> str:
    if row.revoked is not None:
        return "revoked"
    if row.expires is not None and row.expires <= now:
        return "expired"
    return "active"


def check(db: Database, token: str) -> tuple[str | None, str]:
    """(key id or None, reason). A hash is computed and compared in constant time on every
    path, so an unknown id and a wrong secret take the same time (up to the DB lookup)."""
    parts = _split(token)
    kid, secret = parts if parts else ("", token)
    row = None
    if parts:
        with db.session() as s:
            row = s.get(ApiKey, kid)
    stored = row.secret_hash if row is not None else _DUMMY_HASH
    match = hmac.compare_digest(stored.encode(), _hash(secret).encode())
    if row is None:
        return None, "malformed" if parts is None else "unknown"
    if not match:
        return None, "wrong secret"
    status = _status(row, time.time())
    return (row.id, "ok") if status == "active" else (None, status)


def verify(db: Database, token: str) -> str | None:
    """The key id a token belongs to, or None (unknown id, wrong secret, revoked, expired)."""
    return check(db, token)[0]


def describe(db: Database, token: str) -> str:
    """Why a token is (not) accepted, for logs only: ``"ok"``, ``"malformed"``, ``"unknown"``,
    ``"wrong secret"``, ``"revoked"`` or ``"expired"``. Never send it to the client: it tells
    which ids exist."""
    return check(db, token)[1]


def parse_expires(text: str, now: float | None = None) -> float:
    """Epoch seconds from a duration (``90s``, ``90m``, ``12h``, ``30d``, ``2w``) counted from
    ``now``, or from an ISO-8601 date or datetime (UTC unless it carries an offset).

    Raises:
        InputError: (field ``expires``) unreadable, or not in the future.
    """
    now = time.time() if now is None else now
    text = text.strip()
    m = _DURATION.fullmatch(text)
    if m:
        t = now + float(m[1]) * _UNITS[m[2]]
    else:
        try:
            d = datetime.fromisoformat(text)
        except ValueError:
            raise InputError(f"cannot read {text!r}: use a duration like 30d, 12h, 90m, 45s "
                             "or an ISO-8601 date/datetime", field="expires") from None
        t = (d if d.tzinfo else d.replace(tzinfo=timezone.utc)).timestamp()
    if t <= now:
        raise InputError(f"{text!r} is not in the future", field="expires")
    return t


def create_key(db: Database, name: str = "", expires: float | None = None) -> str:
    """Make a key (optionally expiring at epoch ``expires``); returns the token (shown once,
    never stored)."""
    kid, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    with db.session() as s:
        s.add(ApiKey(id=kid, secret_hash=_hash(secret), name=name, expires=expires,
                     source="cli"))
    return f"{PREFIX}_{kid}_{secret}"


def list_keys(db: Database) -> list[dict[str, Any]]:
    """Every key, oldest first: id, name, created, expires, revoked, rotated (epoch seconds or
    None), source and status (``active``/``revoked``/``expired``). Never the hash."""
    now = time.time()
    with db.session() as s:
        rows = s.query(ApiKey).order_by(ApiKey.created, ApiKey.id).all()
        return [{"id": r.id, "name": r.name or "", "created": r.created, "expires": r.expires,
                 "revoked": r.revoked, "rotated": r.rotated, "source": r.source or "cli",
                 "status": _status(r, now)} for r in rows]


def revoke(db: Database, kid: str) -> bool:
    """Revoke a key for good (the running service refuses it from its next request); False if
    no such id. Revoking again keeps the first revocation time."""
    with db.session() as s:
        row = s.get(ApiKey, kid)
        if row is None:
            return False
        if row.revoked is None:
            row.revoked = time.time()
        return True


def rotate(db: Database, kid: str) -> str:
    """Give a key a new secret under the same id (the old secret stops working at once);
    returns the new token. Name, expiry and source are kept. A key listed in ``NTK_API_KEYS``
    gets the secret listed there back at the next service start unless the list is updated.

    Raises:
        InputError: (field ``id``) no such key, or it is revoked.
    """
    secret = secrets.token_urlsafe(32)
    with db.session() as s:
        row = s.get(ApiKey, kid)
        if row is None:
            raise InputError(f"no API key with id {kid!r}", field="id")
        if row.revoked is not None:
            raise InputError(f"API key {kid!r} is revoked and cannot be rotated", field="id")
        row.secret_hash, row.rotated = _hash(secret), time.time()
    return f"{PREFIX}_{kid}_{secret}"


def ensure_keys(db: Database, tokens: str) -> dict[str, int]:
    """Register pre-made tokens (comma separated, e.g. from a Kubernetes Secret through
    ``NTK_API_KEYS``): unknown ids are added (source ``env``); a known id whose secret differs
    gets the new one (the old one stops working); a revoked id is left revoked and skipped.

    Returns:
        counts ``added``, ``rotated``, ``unchanged`` and ``skipped_revoked``.

    Raises:
        ValueError: a malformed token, an id over 32 characters, or an id listed twice
            (nothing is written then).
    """
    wanted: dict[str, str] = {}
    for token in filter(None, (t.strip() for t in tokens.split(","))):
        parts = _split(token)
        if parts is None or len(parts[1]) < 16:
            raise ValueError("NTK_API_KEYS: each key must look like ntk_<id>_<secret of 16+ "
                             "characters> (as `ntk keys create` prints)")
        kid, secret = parts
        if len(kid) > 32:
            raise ValueError(f"NTK_API_KEYS: key id {kid!r} is longer than 32 characters")
        if kid in wanted:
            raise ValueError(f"NTK_API_KEYS: key id {kid!r} is listed more than once")
        wanted[kid] = _hash(secret)
    counts = {"added": 0, "rotated": 0, "unchanged": 0, "skipped_revoked": 0}
    now = time.time()
    with db.session() as s:
        for kid, digest in wanted.items():
            row = s.get(ApiKey, kid)
            if row is None:
                s.add(ApiKey(id=kid, secret_hash=digest, name="NTK_API_KEYS", source="env"))
                counts["added"] += 1
            elif row.revoked is not None:
                log.warning("NTK_API_KEYS lists API key %s, which is revoked: left revoked "
                            "(remove it from NTK_API_KEYS)", kid)
                counts["skipped_revoked"] += 1
            elif not hmac.compare_digest(row.secret_hash.encode(), digest.encode()):
                row.secret_hash, row.rotated, row.source = digest, now, "env"
                log.info("API key %s rotated from NTK_API_KEYS: the previous secret no longer "
                         "works", kid)
                counts["rotated"] += 1
            else:
                counts["unchanged"] += 1
    return counts
