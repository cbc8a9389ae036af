"""The job database upgrades a file made by an older version in place."""

import sqlite3

from service.db import Database, Job


def test_old_database_gets_new_columns(tmp_path):
    path = tmp_path / "old.db"
    con = sqlite3.connect(path)  # kernel_jobs as the first release created it
    con.execute("CREATE TABLE kernel_jobs (id VARCHAR(40) PRIMARY KEY, owner VARCHAR(32), "
                "train VARCHAR(40), test VARCHAR(40), n_train INTEGER, n_test INTEGER, "
                "url VARCHAR(2000), arch JSON, kernels JSON, dtype VARCHAR(16), tile INTEGER, "
                "status VARCHAR(16), error VARCHAR(4000), tiles_done INTEGER, "
                "tiles_total INTEGER, tiles_reused INTEGER, eta_seconds FLOAT, created FLOAT, "
                "started FLOAT, finished FLOAT, runs INTEGER)")
    con.execute("INSERT INTO kernel_jobs (id, owner, train, n_train, url, arch, kernels, "
                "dtype, tile, status) VALUES ('k-1', 'o', 'd-1', 3, 'u', '{}', '[\"ntk\"]', "
                "'float64', 3, 'succeeded')")
    con.commit()
    con.close()
    db = Database(f"sqlite:///{path}")
    with db.session() as s:
        job = s.get(Job, "k-1")
        assert job.method is None and job.m is None  # old rows: NULL, read as "exact"
        s.add(Job(id="k-2", owner="o", train="d", n_train=1, url="u", arch={}, kernels=[],
                  dtype="float64", tile=1, method="features", m=8))
    with db.session() as s:
        assert s.get(Job, "k-2").method == "features"


def test_redact_hides_server_paths_but_not_api_routes(tmp_path):
    from service.config import Settings
    from service.errors import PRIVATE, redact

    st = Settings(store=str(tmp_path / "store"), db=f"sqlite:///{tmp_path / 'db' / 'ntk.db'}")
    PRIVATE.update(st.private_paths())
    text = (f"FileNotFoundError: {tmp_path}/store/kernels/k-1/train; "
            f"file://{tmp_path}/store/x; /home/someone/ntk.py; {tmp_path}/db/ntk.db; "
            "POST /v1/kernels/k-1/resume; W_std/√|F|; rows 40:60")
    out = redact(text)
    assert str(tmp_path) not in out and "/home/someone" not in out
    assert "<store>/kernels/k-1/train" in out and "<db>" in out
    assert "POST /v1/kernels/k-1/resume" in out and "W_std/√|F|" in out and "40:60" in out


def test_statuses_move_only_as_the_lifecycle_table_allows(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'ntk.db'}")
    with db.session() as s:
        s.add(Job(id="k-1", owner="o", train="d", n_train=1, url="u", arch={}, kernels=[],
                  dtype="float64", tile=1))
    assert db.transition(Job, "k-1", "start", runs=1)
    assert db.transition(Job, "k-1", "cancel", error=None)
    assert not db.transition(Job, "k-1", "succeed", tiles_done=9)  # cancelled meanwhile
    with db.session() as s:
        job = s.get(Job, "k-1")
        assert (job.status, job.runs, job.tiles_done) == ("cancelled", 1, 0)
    assert db.transition(Job, "k-1", "resume") and db.transition(Job, "k-1", "start")
    assert db.transition(Job, "k-1", "requeue")  # a restart under a running job
    assert not db.transition(Job, "k-missing", "start")
    with db.session() as s:
        assert s.get(Job, "k-1").status == "queued"
