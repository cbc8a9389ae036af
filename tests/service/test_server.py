"""``ntk serve`` holds its port before the application (and its embedded cluster) starts."""

from __future__ import annotations

import socket
import subprocess

from .conftest import NTK


def test_a_busy_port_fails_before_the_cluster_starts(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {"NTK_STORE": str(tmp_path / "store"), "NTK_DB_URL": f"sqlite:///{tmp_path}/db",
               "NTK_WORKERS": "1", "PATH": "/usr/bin:/bin"}
        out = subprocess.run([*NTK, "serve", "--port", str(port)], env=env, capture_output=True,
                             text=True, timeout=120)
    log = out.stdout + out.stderr
    assert out.returncode != 0
    assert "address already in use" in log.lower()
    # the bind came first: no application startup, so no cluster was started for nothing
    assert "Waiting for application startup" not in log
    assert "LocalCluster" not in log
