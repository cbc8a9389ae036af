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
