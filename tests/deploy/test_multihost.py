"""The deployment without Docker: scheduler, two workers and the API as separate hosts, wired by
the environment variables docker-compose.yml gives its containers, sharing only an S3 store.

Each host is a Linux network namespace with its own address on a bridge when the machine
allows it (root and `ip netns`), else a process group on loopback. The store is an
S3-compatible server (moto) on the bridge, standing in for compose's MinIO. Dask comms are
mutual TLS as in compose: a bundle from ``ntk certs`` in tmp_path, each host given its role's
files under the compose file's NTK_TLS_* names, and a client without the cluster's certificates
is refused. A kernel job and a solve run through the REST API; one worker host is killed (every
process in it) mid-job, and the job still completes with the same kernel.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from distributed import Client as DaskClient
from distributed import Security

import ntkcompute as nc
from ntkcompute import architectures as A
from ntkcompute.client import Client
from ntkcompute.datasets import digits
from ntkcompute.regression import one_hot, solve_direct
from workers.certs import write_bundle
from workers.cluster import TLS_ENV, make_security

from .test_manifests import compose_config

PY = sys.executable
BIN = Path(PY).parent


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _netns_ok() -> bool:
    if os.geteuid() != 0 or os.environ.get("NTK_TEST_HOSTS") == "loopback":
        return False
    probe = f"ntkp{os.getpid() % 100000}"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
        return True
    except (OSError, subprocess.CalledProcessError):
        return False


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Hosts:
    """Named hosts with their own addresses (netns) or loopback process groups."""

    NAMES = ("sched", "w1", "w2", "api")

    def __init__(self) -> None:
        self.netns = _netns_ok()
        self.procs: dict[str, list[subprocess.Popen]] = {n: [] for n in self.NAMES}
        self.procs["store"] = []
        tag = os.getpid() % 10000
        self.ns = {n: f"ntk{tag}{n}" for n in self.NAMES}
        self.bridge = f"ntkbr{tag}"
        if self.netns:
            try:
                self._wire(tag)
            except (OSError, subprocess.CalledProcessError):  # e.g. no bridges: loopback
                self.close()
                self.netns = False
        if not self.netns:
            self.gateway = "127.0.0.1"
            self.addr = dict.fromkeys(self.NAMES, "127.0.0.1")

    def _wire(self, tag: int) -> None:
        """A bridge with the test's address, and one namespace + veth per host."""
        net = f"10.231.{os.getpid() % 200 + 20}"
        self.gateway = f"{net}.1"
        self.addr = {n: f"{net}.{i + 2}" for i, n in enumerate(self.NAMES)}
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, n in enumerate(self.NAMES):
            ns, veth = self.ns[n], f"v{tag}{i}"
            _ip("netns", "add", ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", veth, "master", self.bridge)
            _ip("link", "set", veth, "up")
            _ip("-n", ns, "addr", "add", f"{self.addr[n]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def run(self, host: str, cmd: list[str], env: dict[str, str], log: Path) -> None:
        prefix = ["ip", "netns", "exec", self.ns[host]] if self.netns and host != "store" else []
        with log.open("ab") as f:
            self.procs[host].append(subprocess.Popen(
                [*prefix, *cmd], env={**os.environ, **env}, stdout=f,
                stderr=subprocess.STDOUT, start_new_session=True))

    def kill(self, host: str) -> None:
        """Power off a host: SIGKILL every process in it."""
        if self.netns and host != "store":
            pids = subprocess.run(["ip", "netns", "pids", self.ns[host]], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in self.procs[host]:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(30)

    def close(self) -> None:
        for host in self.procs:
            self.kill(host)
        if self.netns:
            for ns in self.ns.values():
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


def _wait_http(url: str, timeout: float, ok=lambda r: r.status_code == 200) -> httpx.Response:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            r = httpx.get(url, timeout=3)
            if ok(r):
                return r
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(url)


def _compose_env(cfg: dict[str, Any], service: str, values: dict[str, str]) -> dict[str, str]:
    """The service's NTK_* environment from docker-compose.yml (``cfg``), with this test's
    values: every variable compose sets must have one."""
    env = cfg["services"][service]["environment"]
    names = {k for k in env if k.startswith(("NTK_", "NTKCOMPUTE_"))}
    assert names <= set(values), names - set(values)
    return {k: values[k] for k in names}


def _tls_env(cfg: dict[str, Any], service: str, certs: Path) -> dict[str, str]:
    """The service's NTK_TLS_* from compose, each /run/secrets path mapped to the bundle file
    that compose mounts there (``deploy/certs/<name>`` -> ``certs/<name>``)."""
    svc = cfg["services"][service]
    mounted = {}
    for m in svc["secrets"]:
        target = m.get("target", m["source"])
        mounted[target if target.startswith("/") else f"/run/secrets/{target}"] = \
            certs / Path(cfg["secrets"][m["source"]]["file"]).name
    return {v: str(mounted[svc["environment"][v]]) for v in TLS_ENV.values()}


def _refused(address: str, security: Security | None) -> float:
    """Seconds until a Dask client presenting ``security`` (None: no certificate) fails to
    connect to ``address``; the test fails if it connects."""
    t0 = time.monotonic()
    with pytest.raises(OSError):  # CommClosedError, SSLError and TimeoutError all are
        DaskClient(address, security=security, timeout=3).close()
    return time.monotonic() - t0


@pytest.fixture
def hosts():
    h = Hosts()
    yield h
    h.close()


def test_scheduler_workers_api_as_hosts_survive_a_dead_worker(hosts, tmp_path):
    h = hosts
    # the shared store: an S3 server (compose: MinIO), a bucket named as in NTK_STORE
    store_port = _free_port(h.gateway)
    h.run("store", [str(BIN / "moto_server"), "-H", h.gateway, "-p", str(store_port)], {},
          tmp_path / "store.log")
    endpoint = f"http://{h.gateway}:{store_port}"
    _wait_http(f"{endpoint}/moto-api/", 30)
    cfg = compose_config()
    compose_api = cfg["services"]["api"]["environment"]
    bucket = compose_api["NTK_STORE"].removeprefix("s3://").split("/")[0]
    opts = json.loads(compose_api["NTK_STORAGE_OPTIONS"])
    opts["client_kwargs"]["endpoint_url"] = endpoint  # minio:9000 -> this store
    import boto3

    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=opts["key"],
                 aws_secret_access_key=opts["secret"],
                 region_name="us-east-1").create_bucket(Bucket=bucket)

    # mutual TLS: the cluster's bundle as `ntk certs --out deploy/certs` makes it
    certs = tmp_path / "certs"
    write_bundle(certs)
    sched_url = urlsplit(compose_api["NTK_SCHEDULER_ADDRESS"])  # tls://scheduler:8786
    assert sched_url.scheme == "tls", sched_url
    sched_port = sched_url.port if h.netns else _free_port()
    api_port = 8000 if h.netns else _free_port()
    token = f"ntk_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
    values = {
        "NTK_STORE": compose_api["NTK_STORE"],
        "NTK_STORAGE_OPTIONS": json.dumps(opts),
        "NTK_SCHEDULER_ADDRESS": f"tls://{h.addr['sched']}:{sched_port}",
        "NTK_DB_URL": f"sqlite:///{tmp_path / 'api' / 'ntk.db'}",  # compose: PostgreSQL
        "NTK_API_KEYS": token,
        "NTK_MAX_JOBS_PER_KEY": "8",
        "NTKCOMPUTE_DEVICE": "cpu",
    }
    env = {s: _compose_env(cfg, s, {**values, **_tls_env(cfg, s, certs)})
           for s in ("scheduler", "worker", "api")}
    ntk = [PY, "-m", "ntkcli"]
    h.run("sched", [*ntk, "scheduler", "--host", h.addr["sched"], "--port", str(sched_port),
                    "--dashboard-port", str(_free_port())], env["scheduler"],
          tmp_path / "sched.log")
    for w in ("w1", "w2"):
        h.run(w, [*ntk, "worker", "--nprocs", "1", "--name", w], env["worker"],
              tmp_path / f"{w}.log")
    h.run("api", [*ntk, "serve", "--host", h.addr["api"], "--port", str(api_port)],
          env["api"], tmp_path / "api.log")
    url = f"http://{h.addr['api']}:{api_port}"
    ready = _wait_http(f"{url}/readyz", 90, lambda r: "ok (2 workers)" in r.text)
    assert ready.json()["checks"]["store"] == "ok"

    # the cluster is closed: from this process (on the hosts' network), a client without a
    # certificate of the cluster's CA is refused, in plain TCP or presenting a stranger's
    # certificate; with the api's client certificate it connects, and every listener is TLS
    address = values["NTK_SCHEDULER_ADDRESS"]
    stranger = write_bundle(tmp_path / "stranger", roles=["client"])
    refused = [_refused(address.replace("tls://", "tcp://"), None),
               _refused(address, make_security(certs / "ca.pem", stranger["client"],
                                               stranger["client-key"]))]
    assert max(refused) < 15, refused
    # ... by the scheduler itself (not a client-side error): it logs both failed handshakes
    t0 = time.monotonic()
    while (n := (tmp_path / "sched.log").read_text().count("TLS handshake failed")) < 2 \
            and time.monotonic() - t0 < 10:
        time.sleep(0.2)
    assert n >= 2, (tmp_path / "sched.log").read_text()[-2000:]
    with DaskClient(address, timeout=30, security=make_security(*(
            env["api"][v] for v in TLS_ENV.values()))) as dc:
        listeners = [a for addr, wk in dc.scheduler_info()["workers"].items()
                     for a in (addr, wk["nanny"])]
    assert len(listeners) == 4 and all(a.startswith("tls://") for a in listeners), listeners

    x, y = digits()
    xtr, ytr, xte, yte = x[:192], y[:192], x[192:256], y[192:256]  # 6 + 3 tiles of 64
    arch = A.cntk(2)
    with Client(url, token) as c:
        train, test = c.upload(xtr, ytr), c.upload(xte, yte)
        job = c.kernel(train, arch, test=test, tile=64)
        t0 = time.monotonic()
        while job.refresh()["tiles_done"] < 3 and time.monotonic() - t0 < 120:
            time.sleep(0.1)
        before = job.info
        assert before["status"] == "running" and before["tiles_done"] < before["tiles_total"]
        h.kill("w1")  # one worker host goes away mid-job
        _wait_http(f"{url}/readyz", 60, lambda r: "ok (1 workers)" in r.text)
        t1 = time.monotonic()
        job.wait(timeout=300, progress=False)
        t2 = time.monotonic()
        assert job.info["status"] == "succeeded"
        k_tr, k_te = nc.kernel(arch, xtr)["ntk"], nc.kernel(arch, xte, xtr)["ntk"]
        np.testing.assert_allclose(job.to_numpy("ntk"), k_tr, rtol=1e-12, atol=0)
        np.testing.assert_allclose(job.to_numpy("ntk", "test"), k_te, rtol=1e-12, atol=0)
        sol = c.solve(job, 1e-3, tol=1e-10).wait(timeout=120)
        ref = k_te @ solve_direct(k_tr, one_hot(ytr, 10), 1e-3)
        np.testing.assert_allclose(sol.predictions(0), ref, atol=1e-6)
        assert sol.metrics["best"]["accuracy"] == float(np.mean(ref.argmax(1) == yte))
    # nothing but the store was shared: the kernel lives in the S3 bucket
    import s3fs

    fs = s3fs.S3FileSystem(**opts)
    assert fs.exists(f"{bucket}/store/kernels/{job.id}/train/ntk/zarr.json")
    print(f"hosts: {'network namespaces' if h.netns else 'loopback'}; w1 killed at "
          f"{before['tiles_done']}/{before['tiles_total']} tiles after {t1 - t0:.1f}s; the "
          f"rest took {t2 - t1:.1f}s on w2; uncertified clients refused in "
          f"{', '.join(f'{t:.1f}s' for t in refused)}")
