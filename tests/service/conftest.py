"""The real service for tests: ``ntk serve`` (uvicorn) on a loopback port, a real Dask cluster
(embedded LocalCluster, or scheduler/worker processes), SQLite and Zarr under tmp_path."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

NTK = [sys.executable, "-m", "ntkcli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_key(db: str, name: str = "") -> str:
    out = subprocess.run([*NTK, "keys", "create", "--db", db, "--name", name],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


class PortTaken(RuntimeError):
    """``ntk serve`` could not bind its port."""


class Service:
    """One ``ntk serve`` process; ``start()`` after ``stop()`` starts it again on the same port
    and DB."""

    def __init__(self, root: Path, env: dict[str, str] | None = None,
                 scheduler: str | None = None) -> None:
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # NTK_TEST_DB_URL runs the suite on another database (e.g. PostgreSQL)
        self.db = os.environ.get("NTK_TEST_DB_URL") or f"sqlite:///{root / 'ntk.db'}"
        self.store = str(root / "store")
        self.env = {**os.environ, "NTK_STORE": self.store, "NTK_DB_URL": self.db,
                    "NTK_WORKERS": "2", **(env or {})}
        if scheduler:
            self.env["NTK_SCHEDULER_ADDRESS"] = scheduler
        self.proc: subprocess.Popen | None = None
        self.log = root / "service.log"
        self.started = False

    def start(self, timeout: float = 90) -> Service:
        """Start and wait for ``/readyz``. A first start whose port was taken between
        :func:`free_port` and the bind (by another test's cluster) moves to a fresh port once."""
        try:
            return self._start(timeout)
        except PortTaken:
            if self.started:
                raise
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            return self._start(timeout)

    def _start(self, timeout: float) -> Service:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([*NTK, "serve", "--port", str(self.port)],
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                text = self.log.read_bytes()[offset:].decode(errors="replace")
                error = PortTaken if "address already in use" in text.lower() else RuntimeError
                raise error(f"service exited: {text[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    self.started = True
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"service not ready: {self.log.read_text()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


def wait_port(port: int, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port}")


@contextmanager
def external_cluster(root: Path, env: dict[str, str]) -> Iterator[Service]:
    """A service on an external loopback cluster: a ``dask scheduler`` and one single-thread
    ``dask worker`` process (``svc.address``, ``svc.procs``: a test may ask the workers what
    they hold, or kill them)."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = [sys.executable, "-m", "distributed.cli.dask_"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [subprocess.Popen([dask[0], dask[1], dask[2] + "scheduler", "--host",
                               "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"],
                              **quiet)]
    try:
        wait_port(port)
        procs.append(subprocess.Popen([dask[0], dask[1], dask[2] + "worker", address,
                                       "--nthreads", "1", "--nworkers", "1",
                                       "--no-dashboard"], **quiet))
        svc = Service(root, env=env, scheduler=address).start()
        svc.address, svc.procs = address, procs
        try:
            yield svc
        finally:
            svc.stop()
    finally:
        for p in procs:
            p.kill()
            p.wait(30)


@pytest.fixture(scope="session")
def service(tmp_path_factory):
    """A service with small limits (to test them) and two API keys."""
    root = tmp_path_factory.mktemp("service")
    svc = Service(root, env={"NTK_MAX_UPLOAD_BYTES": str(4 << 20), "NTK_MAX_N": "2000",
                             "NTK_MAX_BLOCK_BYTES": str(1 << 20),
                             "NTK_MAX_JOBS_PER_KEY": "3"}).start()
    svc.key_a, svc.key_b = make_key(svc.db, "a"), make_key(svc.db, "b")
    yield svc
    svc.stop()
