"""API keys: ``ntk keys create/list/revoke/rotate`` (real processes) against a running service,
expiry, rotation and revocation through ``NTK_API_KEYS`` across restarts, old databases."""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import time
from datetime import datetime, timezone

import httpx
import pytest
from sqlalchemy import create_engine, text

from ntkcompute.errors import InputError
from service import keys as K
from service.db import ApiKey, Database

from .conftest import NTK, Service, make_key


def ntk_keys(*args: str, db: str) -> subprocess.CompletedProcess:
    return subprocess.run([*NTK, "keys", *args, "--db", db], capture_output=True, text=True,
                          timeout=120)


def probe(svc: Service, token: str) -> int:
    """Status of the authenticated ``GET /v1/limits`` with this token."""
    return httpx.get(f"{svc.url}/v1/limits", headers={"Authorization": f"Bearer {token}"},
                     timeout=30).status_code


def env_token(kid: str) -> str:
    return f"ntk_{kid}_{secrets.token_urlsafe(24)}"


# ids unique per run, so that a shared NTK_TEST_DB_URL database does not mix runs
ENV_ID, ENV_REVOKED_ID = f"env{secrets.token_hex(4)}", f"envr{secrets.token_hex(4)}"
ENV_OLD, ENV_REVOKED = env_token(ENV_ID), env_token(ENV_REVOKED_ID)


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    s = Service(root, env={"NTK_WORKERS": "1",
                           "NTK_API_KEYS": f"{ENV_OLD}, {ENV_REVOKED}"}).start()
    yield s
    s.stop()


def test_revoke_and_list(svc):
    token = make_key(svc.db, "to-revoke")
    kid, secret = token.split("_", 2)[1:]
    assert probe(svc, token) == 200
    out = ntk_keys("revoke", kid, db=svc.db)
    assert out.returncode == 0 and kid in out.stdout, out.stderr
    assert probe(svc, token) == 401  # the running service, at once
    listed = ntk_keys("list", "--json", db=svc.db)
    table = ntk_keys("list", db=svc.db)
    assert listed.returncode == 0 and table.returncode == 0, listed.stderr + table.stderr
    rows = {r["id"]: r for r in json.loads(listed.stdout)}
    assert rows[kid]["status"] == "revoked" and rows[kid]["revoked"] > rows[kid]["created"]
    assert rows[kid]["name"] == "to-revoke" and rows[kid]["source"] == "cli"
    assert set(rows[kid]) == {"id", "name", "created", "expires", "revoked", "rotated",
                              "source", "status"}
    assert rows[ENV_ID]["source"] == "env" and rows[ENV_ID]["status"] == "active"
    line = next(ln for ln in table.stdout.splitlines() if ln.startswith(kid))
    assert "revoked" in line and "to-revoke" in line
    assert table.stdout.splitlines()[0].split()[:4] == ["ID", "NAME", "SOURCE", "STATUS"]
    digest = hashlib.sha256(secret.encode()).hexdigest()
    for text_ in (listed.stdout, table.stdout):
        assert secret not in text_ and digest not in text_
    # unknown ids: a message on stderr, exit 2; a revoked key cannot be rotated
    bad = ntk_keys("revoke", "nosuchid", db=svc.db)
    assert bad.returncode == 2 and "nosuchid" in bad.stderr and "Traceback" not in bad.stderr
    bad = ntk_keys("rotate", kid, db=svc.db)
    assert bad.returncode == 2 and "revoked" in bad.stderr and bad.stdout == ""
    assert probe(svc, token) == 401


def test_rotate(svc):
    old = make_key(svc.db, "to-rotate")
    kid = old.split("_", 2)[1]
    assert probe(svc, old) == 200
    out = ntk_keys("rotate", kid, db=svc.db)
    assert out.returncode == 0, out.stderr
    new = out.stdout.strip()
    assert new.startswith(f"ntk_{kid}_") and new != old
    assert probe(svc, new) == 200 and probe(svc, old) == 401
    row = next(r for r in K.list_keys(Database(svc.db)) if r["id"] == kid)
    assert row["rotated"] is not None and row["status"] == "active"
    bad = ntk_keys("rotate", "nosuchid", db=svc.db)
    assert bad.returncode == 2 and "nosuchid" in bad.stderr


def test_expiry(svc):
    out = ntk_keys("create", "--name", "temp", "--expires", "1h", db=svc.db)
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    kid = token.split("_", 2)[1]
    assert probe(svc, token) == 200
    db = Database(svc.db)
    row = next(r for r in K.list_keys(db) if r["id"] == kid)
    assert abs(row["expires"] - (time.time() + 3600)) < 120
    db.update(ApiKey, kid, expires=time.time() - 1)
    assert probe(svc, token) == 401
    assert K.describe(db, token) == "expired"
    assert next(r for r in K.list_keys(db) if r["id"] == kid)["status"] == "expired"
    bad = ntk_keys("create", "--expires", "2000-01-01", db=svc.db)
    assert bad.returncode == 2 and "expires" in bad.stderr and bad.stdout == ""


def test_env_rotation_and_revoked_across_restart(svc):
    assert probe(svc, ENV_OLD) == 200 and probe(svc, ENV_REVOKED) == 200
    assert ntk_keys("revoke", ENV_REVOKED_ID, db=svc.db).returncode == 0
    assert probe(svc, ENV_REVOKED) == 401
    new, revoked_new = env_token(ENV_ID), env_token(ENV_REVOKED_ID)
    svc.stop()
    svc.env["NTK_API_KEYS"] = f"{new},{revoked_new}"  # the revoked id with a new secret
    svc.start()
    assert probe(svc, new) == 200 and probe(svc, ENV_OLD) == 401
    assert probe(svc, revoked_new) == 401 and probe(svc, ENV_REVOKED) == 401
    svc.stop()
    svc.env["NTK_API_KEYS"] = f"{new},{ENV_REVOKED}"  # the original secret of the revoked id
    svc.start()
    assert probe(svc, new) == 200 and probe(svc, ENV_REVOKED) == 401
    log = svc.log.read_text()
    assert f"API key {ENV_ID} rotated from NTK_API_KEYS" in log
    assert f"API key {ENV_REVOKED_ID}, which is revoked" in log
    for token in (new, ENV_OLD, ENV_REVOKED, revoked_new):
        assert token.split("_", 2)[2] not in log


# in-process: the same functions without a service --------------------------------------------


def test_old_database_without_new_columns(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    secret = secrets.token_urlsafe(32)
    eng = create_engine(url)
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE api_keys (id VARCHAR(32) PRIMARY KEY, "
                          "secret_hash VARCHAR(64) NOT NULL, name VARCHAR(200) NOT NULL, "
                          "created FLOAT NOT NULL)"))
        conn.execute(text("INSERT INTO api_keys VALUES ('oldkey', :h, 'legacy', 1.0)"),
                     {"h": hashlib.sha256(secret.encode()).hexdigest()})
    eng.dispose()
    db = Database(url)
    token = f"ntk_oldkey_{secret}"
    assert K.verify(db, token) == "oldkey"
    (row,) = K.list_keys(db)
    assert row == {"id": "oldkey", "name": "legacy", "created": 1.0, "expires": None,
                   "revoked": None, "rotated": None, "source": "cli", "status": "active"}
    new = K.rotate(db, "oldkey")
    assert K.verify(db, new) == "oldkey" and K.verify(db, token) is None
    assert K.revoke(db, "oldkey") and K.verify(db, new) is None
    assert K.ensure_keys(db, token) == {"added": 0, "rotated": 0, "unchanged": 0,
                                        "skipped_revoked": 1}
    assert K.verify(db, token) is None


def test_verify_paths_all_hash_and_compare(tmp_path, monkeypatch):
    db = Database(f"sqlite:///{tmp_path / 'k.db'}")
    ok = K.create_key(db, "ok")
    gone = K.create_key(db, "gone")
    K.revoke(db, gone.split("_", 2)[1])
    old = K.create_key(db, "old", expires=time.time() - 5)
    kid = ok.split("_", 2)[1]
    cases = {ok: "ok", f"ntk_{kid}_{'x' * 43}": "wrong secret",
             f"ntk_{'0' * 16}_{'x' * 43}": "unknown", "garbage": "malformed",
             gone: "revoked", old: "expired"}
    calls = {"hash": 0, "compare": 0}
    real_hash, real_compare = K._hash, K.hmac.compare_digest

    def counting_hash(s: str) -> str:
        calls["hash"] += 1
        return real_hash(s)

    def counting_compare(a: bytes, b: bytes) -> bool:
        calls["compare"] += 1
        return real_compare(a, b)

    monkeypatch.setattr(K, "_hash", counting_hash)
    monkeypatch.setattr(K.hmac, "compare_digest", counting_compare)
    for token, reason in cases.items():
        calls.update(hash=0, compare=0)
        assert K.describe(db, token) == reason
        assert calls == {"hash": 1, "compare": 1}, reason
        assert K.verify(db, token) == (kid if reason == "ok" else None)


def test_ensure_keys_summary_and_validation(tmp_path, caplog):
    db = Database(f"sqlite:///{tmp_path / 'k.db'}")
    a, b = env_token("a"), env_token("b")
    assert K.ensure_keys(db, f"{a},{b}") == {"added": 2, "rotated": 0, "unchanged": 0,
                                             "skipped_revoked": 0}
    a2 = env_token("a")
    K.revoke(db, "b")
    with caplog.at_level("INFO", logger="ntkcompute.service"):
        summary = K.ensure_keys(db, f"{a2}, {env_token('b')}, {env_token('c')}")
    assert summary == {"added": 1, "rotated": 1, "unchanged": 0, "skipped_revoked": 1}
    assert K.verify(db, a2) == "a" and K.verify(db, a) is None
    assert "rotated" in caplog.text and "revoked" in caplog.text
    assert K.ensure_keys(db, a2)["unchanged"] == 1
    with pytest.raises(ValueError, match="ntk_<id>_<secret of 16"):
        K.ensure_keys(db, f"{env_token('d')},ntk_e_short")
    with pytest.raises(ValueError, match="more than once"):
        K.ensure_keys(db, f"{env_token('f')},{env_token('f')}")
    with pytest.raises(ValueError, match="longer than 32"):
        K.ensure_keys(db, env_token("g" * 33))
    ids = {r["id"] for r in K.list_keys(db)}
    assert ids == {"a", "b", "c"}  # nothing written by the refused lists
    with pytest.raises(InputError, match="no API key"):
        K.rotate(db, "zzz")
    assert K.revoke(db, "zzz") is False


def test_parse_expires():
    now = 1_000_000.0
    assert K.parse_expires("30d", now) == now + 30 * 86400
    assert K.parse_expires("12h", now) == now + 12 * 3600
    assert K.parse_expires("90m", now) == now + 5400
    assert K.parse_expires("1.5s", now) == now + 1.5
    assert K.parse_expires("2w", now) == now + 14 * 86400
    assert K.parse_expires("2030-01-01", now) == datetime(2030, 1, 1,
                                                          tzinfo=timezone.utc).timestamp()
    assert K.parse_expires("2030-01-01T01:00:00+01:00", now) == K.parse_expires("2030-01-01",
                                                                                now)
    for bad in ("soon", "30x", "1970-01-01", "0s", ""):
        with pytest.raises(InputError) as e:
            K.parse_expires(bad, now)
        assert e.value.field == "expires"
