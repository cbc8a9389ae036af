"""workers.cluster: what get_client started is closed, client first (a client on someone
else's cluster is left alone unless the caller owns it); workers count the cores and memory
of their own cgroup."""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import time
from pathlib import Path

from distributed import Client

from workers.cluster import shutdown, usable_cores

from ..service.conftest import NTK, free_port
from .test_tls import wait_listening


class _Closable:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def close(self) -> None:
        self.log.append(self.name)


def test_shutdown_closes_what_get_client_started():
    log: list[str] = []
    shutdown(_Closable("client", log), _Closable("cluster", log))
    assert log == ["client", "cluster"]


def test_shutdown_leaves_a_joined_or_given_client_open_unless_owned():
    log: list[str] = []
    shutdown(_Closable("client", log), None)
    assert log == []
    shutdown(_Closable("client", log), None, own_client=True)
    assert log == ["client"]
    shutdown(None, None, own_client=True)  # a runner stopped before it started
    assert log == ["client"]


# a worker in a small cgroup -----------------------------------------------------------------
GIB = 1 << 30


def _v1_dirs(controller: str) -> tuple[Path, Path] | None:
    """(this process's cgroup dir, its hierarchy's root) of a cgroup v1 ``controller``."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        names = controllers.split(",")
        if controller in names:
            for mount in (Path("/sys/fs/cgroup") / controllers,
                          Path("/sys/fs/cgroup") / controller):
                if mount.is_dir():
                    return mount / path.lstrip("/"), mount
    return None


def _small_cgroup(name: str):
    """A 1-CPU, 2 GiB cgroup (v1 cpu + memory, or v2) for a child process: (a preexec
    function that moves the child into it, cleanup, "cgroup v1"/"cgroup v2"), or None where
    this machine does not let us make one (not root, cgroupfs read-only)."""
    made: list[Path] = []

    def cleanup() -> None:
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()

    try:
        own = Path("/proc/self/cgroup").read_text()
        if own.strip().startswith("0::") and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            parent = Path("/sys/fs/cgroup") / own.strip().split("::", 1)[1].lstrip("/")
            (parent / "cgroup.subtree_control").write_text("+cpu +memory")
            d = parent / name
            d.mkdir()
            made.append(d)
            (d / "cpu.max").write_text("100000 100000")
            (d / "memory.max").write_text(str(2 * GIB))
            procs, how = [d / "cgroup.procs"], "cgroup v2"
        else:
            cpu, mem = _v1_dirs("cpu"), _v1_dirs("memory")
            if cpu is None or mem is None:
                return None
            dirs = (cpu[0] / name, mem[0] / name)
            for d in dirs:
                d.mkdir()
                made.append(d)
            (dirs[0] / "cpu.cfs_period_us").write_text("100000")
            (dirs[0] / "cpu.cfs_quota_us").write_text("100000")
            (dirs[1] / "memory.limit_in_bytes").write_text(str(2 * GIB))
            procs, how = [d / "cgroup.procs" for d in dirs], "cgroup v1"
    except OSError:
        cleanup()
        return None

    def enter() -> None:
        for p in procs:
            p.write_text(str(os.getpid()))

    return enter, cleanup, how


def _affinity_and_rss() -> None:
    """The fallback: one CPU by affinity, 2 GiB by RLIMIT_RSS (what dask reads besides
    cgroups)."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    resource.setrlimit(resource.RLIMIT_RSS, (2 * GIB, 2 * GIB))


def test_worker_in_a_1_cpu_2_gib_cgroup_starts_one_process_within_it(tmp_path):
    assert usable_cores() >= 2, "this test needs a machine with more than one core"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NTK_TLS_")}
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = subprocess.Popen([*NTK, "scheduler", "--host", "127.0.0.1", "--port",
                                  str(port), "--dashboard-port", "0"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    small = _small_cgroup(f"ntk-test-{os.getpid()}")
    enter, cleanup, how = small or (_affinity_and_rss, lambda: None, "affinity + rlimit")
    log = tmp_path / "worker.log"
    worker = None
    try:
        wait_listening(port, scheduler)
        with log.open("wb") as out:
            worker = subprocess.Popen([*NTK, "worker", "--scheduler", address], env=env,
                                      stdout=out, stderr=subprocess.STDOUT, preexec_fn=enter)
        with Client(address, timeout=30) as c:
            c.wait_for_workers(1, timeout=90)
            time.sleep(2)  # a second process, if one were started, would have joined
            workers = c.scheduler_info()["workers"]
        assert len(workers) == 1, (how, workers)
        limit = next(iter(workers.values()))["memory_limit"]
        assert 1.9 * GIB <= limit <= 2 * GIB, (how, limit)
        assert "1 process(es) of" in log.read_text(), log.read_text()
        # the container healthcheck of a worker: its host's worker is on the scheduler
        health = [*NTK, "worker-health", "--scheduler", address]
        r = subprocess.run(health, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "1 worker(s) of this host" in r.stdout, r
        worker.terminate()
        worker.wait(30)
        deadline = time.monotonic() + 30
        while subprocess.run(health, env=env, capture_output=True,
                             timeout=60).returncode == 0:
            assert time.monotonic() < deadline, "the scheduler still lists the worker"
            time.sleep(1)
    finally:
        for p in (worker, scheduler):
            if p is not None:
                p.terminate()
                p.wait(30)
        cleanup()
    print(f"limits applied by {how}")
