"""Settings from pydantic-settings: explicit values over the environment over ``*_FILE``
secrets over ``.env`` over defaults; empty variables ignored; unreadable secret files named."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.config import ENV, Settings


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in ENV.values():
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(f"{var}_FILE", raising=False)
    monkeypatch.delenv("NTK_ENV_FILE", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env but the test's own
    return monkeypatch


def test_each_source_in_its_order(clean_env, tmp_path):
    (tmp_path / ".env").write_text("NTK_MAX_N=11\nNTK_DB_URL=sqlite:///from-dotenv.db\n"
                                   "NTK_MAX_LAMBDAS=7\nNTK_API_KEYS=from-dotenv\n")
    assert Settings.from_env().max_n == 11 and Settings.from_env().max_lambdas == 7
    secret = tmp_path / "keys"
    secret.write_text("tok-a,tok-b\n")
    clean_env.setenv("NTK_API_KEYS_FILE", str(secret))
    assert Settings.from_env().api_keys == "tok-a,tok-b"  # the file over .env, newline off
    clean_env.setenv("NTK_API_KEYS", "from-env")
    clean_env.setenv("NTK_MAX_N", "12")
    clean_env.setenv("NTK_DB_URL", "sqlite:///from-env.db")
    s = Settings.from_env()
    assert (s.api_keys, s.max_n, s.db, s.max_lambdas) == (
        "from-env", 12, "sqlite:///from-env.db", 7)
    s = Settings.from_env(max_n=13, db=None)  # a flag not given (None) changes nothing
    assert (s.max_n, s.db) == (13, "sqlite:///from-env.db")
    clean_env.setenv("NTK_MAX_N", "")  # empty: not set
    assert Settings.from_env().max_n == 11


def test_env_file_can_be_named_and_defaults_hold_without_one(clean_env, tmp_path):
    assert Settings.from_env().max_n == Settings.model_fields["max_n"].default
    other = tmp_path / "prod.env"
    other.write_text("NTK_STORE=s3://bucket/ntk\nNTK_LOG_FORMAT=json\nNTK_DASHBOARD=none\n")
    clean_env.setenv("NTK_ENV_FILE", str(other))
    s = Settings.from_env()
    assert (s.store, s.log_format, s.dashboard) == ("s3://bucket/ntk", "json", None)


def test_bad_values_and_unreadable_secrets_are_named(clean_env, tmp_path):
    clean_env.setenv("NTK_MAX_N", "many")
    with pytest.raises(ValidationError, match="max_n"):
        Settings.from_env()
    clean_env.delenv("NTK_MAX_N")
    clean_env.setenv("NTK_TLS_KEY_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(ValueError, match="NTK_TLS_KEY_FILE: cannot read"):
        Settings.from_env()


def test_every_field_has_one_variable():
    assert ENV["db"] == "NTK_DB_URL" and ENV["scheduler"] == "NTK_SCHEDULER_ADDRESS"
    assert ENV["staging"] == "NTK_STAGING_DIR" and ENV["tls_ca_file"] == "NTK_TLS_CA_FILE"
    assert set(ENV) == set(Settings.model_fields)
    assert len(set(ENV.values())) == len(ENV)
