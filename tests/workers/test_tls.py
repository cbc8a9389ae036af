"""Mutual TLS for Dask comms, with real ``ntk certs``, ``ntk scheduler`` and ``ntk worker``
processes on loopback: only a peer holding a certificate from the cluster's CA can connect,
so nobody else can run code on the workers."""

from __future__ import annotations

import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from distributed import Client, Security

import ntkcompute as nc
import workers
from ntkcompute import architectures as A
from ntkcompute.errors import InputError
from workers.certs import write_bundle
from workers.cluster import TLS_ENV, get_client, make_security

NTK = [sys.executable, "-m", "ntkcli"]
ROLES = ("scheduler", "worker", "client")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ntk(*args: str, env: dict[str, str] | None = None, timeout: float = 60
        ) -> subprocess.CompletedProcess:
    return subprocess.run([*NTK, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def plain_env() -> dict[str, str]:
    """This environment without any NTK_TLS_* or scheduler address."""
    drop = {*TLS_ENV.values(), "NTK_SCHEDULER_ADDRESS"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def tls_flags(d: Path, role: str) -> list[str]:
    return ["--tls-ca-file", str(d / "ca.pem"), "--tls-cert", str(d / f"{role}.pem"),
            "--tls-key", str(d / f"{role}-key.pem")]


def tls_env(d: Path, role: str = "client") -> dict[str, str]:
    return {TLS_ENV["tls_ca_file"]: str(d / "ca.pem"), TLS_ENV["tls_cert"]: str(d / f"{role}.pem"),
            TLS_ENV["tls_key"]: str(d / f"{role}-key.pem")}


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, "process exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``ntk certs`` twice (the cluster's CA and a stranger's), a TLS ``ntk scheduler`` and a
    TLS ``ntk worker`` process."""
    root = tmp_path_factory.mktemp("tls")
    good, other = root / "certs", root / "other"
    for d in (good, other):
        r = ntk("certs", "--out", str(d))
        assert r.returncode == 0, r.stderr
    port = free_port()
    address = f"tls://127.0.0.1:{port}"
    env = plain_env()
    procs = [subprocess.Popen([*NTK, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-port", "0", *tls_flags(good, "scheduler")],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        wait_listening(port, procs[0])
        procs.append(subprocess.Popen([*NTK, "worker", "--scheduler", address, "--nprocs", "1",
                                       *tls_flags(good, "worker")],
                                      env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        with Client(address, security=make_security(*tls_flags(good, "client")[1::2]),
                    timeout=30) as c:
            c.wait_for_workers(1, timeout=60)
        yield {"root": root, "good": good, "other": other, "address": address, "port": port}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)


def good_security(cluster: dict) -> Security:
    d = cluster["good"]
    return make_security(d / "ca.pem", d / "client.pem", d / "client-key.pem")


def touch(path: str) -> str:
    Path(path).write_text("ran")
    return path


def raw_tls(port: int, ctx: ssl.SSLContext, wait: float = 2.0) -> str:
    """"refused" when a TLS connection with ``ctx`` is cut: the handshake fails, or (TLS 1.3
    checks the client's certificate after the client's side of the handshake) the server
    sends an alert or closes; "open" when the server talks (Dask's comm handshake) or waits."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                ctx.wrap_socket(raw) as s:
            s.settimeout(wait)
            return "refused" if s.recv(1) == b"" else "open"
    except TimeoutError:
        return "open"
    except (ssl.SSLError, ConnectionError):
        return "refused"


def context(ca: Path, cert_dir: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    if cert_dir is not None:
        ctx.load_cert_chain(cert_dir / "client.pem", cert_dir / "client-key.pem")
    return ctx


def test_certs_files_modes_overwrite_and_k8s_secrets(tmp_path):
    out, secrets = tmp_path / "bundle", tmp_path / "secrets.yaml"
    r = ntk("certs", "--out", str(out), "--days", "30", "--k8s-secrets", str(secrets),
            "--namespace", "ntk")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    names = ["ca", *ROLES]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n}{s}.pem" for n in names for s in ("", "-key"))
    for n in names:
        assert stat.S_IMODE((out / f"{n}-key.pem").stat().st_mode) == 0o600
        assert stat.S_IMODE((out / f"{n}.pem").stat().st_mode) == 0o644
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600

    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    for role in ROLES:
        leaf = x509.load_pem_x509_certificate((out / f"{role}.pem").read_bytes())
        leaf.verify_directly_issued_by(ca)
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(eku)
        days = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days
        assert 29 <= days <= 30
        ssl.create_default_context().load_cert_chain(out / f"{role}.pem",
                                                     out / f"{role}-key.pem")

    docs = list(yaml.safe_load_all(secrets.read_text()))
    assert [d["metadata"]["name"] for d in docs] == [f"ntk-tls-{r}" for r in ROLES]
    ca_key = (out / "ca-key.pem").read_text()
    for role, d in zip(ROLES, docs, strict=True):
        assert (d["apiVersion"], d["kind"], d["type"]) == ("v1", "Secret", "Opaque")
        assert d["metadata"]["namespace"] == "ntk"
        assert set(d["stringData"]) == {"ca.pem", "tls.crt", "tls.key"}
        assert d["stringData"]["ca.pem"] == (out / "ca.pem").read_text()
        assert d["stringData"]["tls.crt"] == (out / f"{role}.pem").read_text()
        assert d["stringData"]["tls.key"] == (out / f"{role}-key.pem").read_text()
    assert ca_key.strip() not in secrets.read_text()

    before = (out / "ca.pem").read_bytes()
    r = ntk("certs", "--out", str(out))
    assert r.returncode == 2 and "refusing to overwrite" in r.stderr and "--force" in r.stderr
    r = ntk("certs", "--out", str(tmp_path / "new"), "--k8s-secrets", str(secrets))
    assert r.returncode == 2 and "secrets.yaml" in r.stderr
    assert not (tmp_path / "new").exists()  # refused before anything was written
    assert (out / "ca.pem").read_bytes() == before
    r = ntk("certs", "--out", str(out), "--force", "--roles", "worker")
    assert r.returncode == 0, r.stderr
    assert (out / "ca.pem").read_bytes() != before
    for bad in ("../x", "ca", ""):
        with pytest.raises(InputError, match="role"):
            write_bundle(tmp_path / "bad", roles=[bad])
    assert not (tmp_path / "bad").exists()


def test_scheduler_refuses_plain_tcp_on_public_host(tmp_path):
    env = plain_env()
    t0 = time.monotonic()
    r = ntk("scheduler", "--host", "0.0.0.0", "--port", str(free_port()), env=env)
    assert r.returncode == 2
    assert "--insecure" in r.stderr and "--tls-ca-file" in r.stderr
    assert time.monotonic() - t0 < 20
    # all three TLS files or none; each readable
    r = ntk("scheduler", "--tls-cert", "x.pem", "--tls-key", "x-key.pem", env=env)
    assert r.returncode == 2 and "--tls-ca-file" in r.stderr
    missing = str(tmp_path / "nope.pem")
    (tmp_path / "c.pem").write_text("x")
    r = ntk("scheduler", "--tls-ca-file", missing, "--tls-cert", str(tmp_path / "c.pem"),
            "--tls-key", str(tmp_path / "c.pem"), env=env)
    assert r.returncode == 2 and missing in r.stderr
    r = ntk("worker", "--scheduler", "tls://127.0.0.1:1", env=env)
    assert r.returncode == 2 and "needs TLS" in r.stderr

    port = free_port()
    p = subprocess.Popen([*NTK, "scheduler", "--host", "0.0.0.0", "--port", str(port),
                          "--dashboard-port", "0", "--insecure"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(port, p)
    finally:
        p.terminate()
        _, err = p.communicate(timeout=30)
    assert "WARNING" in err and "plain TCP" in err


def test_unauthenticated_peers_cannot_connect_or_run_code(cluster):
    address, port, good, other = (cluster[k] for k in ("address", "port", "good", "other"))
    marker = str(cluster["root"] / "pwned")
    with pytest.raises(Exception):  # noqa: B017 - the TLS refusals have no common type
        Client(f"tcp://127.0.0.1:{port}", timeout=5).run(touch, marker)
    with pytest.raises(Exception):  # noqa: B017
        Client(address, timeout=5).run(touch, marker)
    # a stranger's CA and certificate
    stranger = make_security(other / "ca.pem", other / "client.pem", other / "client-key.pem")
    with pytest.raises(Exception):  # noqa: B017
        Client(address, security=stranger, timeout=5).run(touch, marker)
    # trusts the cluster's CA but presents a stranger's certificate: the server refuses it
    spoof = make_security(good / "ca.pem", other / "client.pem", other / "client-key.pem")
    with pytest.raises(Exception):  # noqa: B017
        Client(address, security=spoof, timeout=5).run(touch, marker)
    assert not Path(marker).exists()

    with Client(address, security=good_security(cluster), timeout=30) as c:
        info = c.scheduler_info()
        listeners = [a for w in info["workers"].values() for a in (w["id"], w["nanny"])]
    assert len(listeners) == 2 and all(a.startswith("tls://127.0.0.1:") for a in listeners)
    # the worker's and nanny's own ports refuse the same peers, at the TLS layer
    for a in [address, *listeners]:
        p = int(a.rsplit(":", 1)[1])
        assert raw_tls(p, context(good / "ca.pem")) == "refused", a  # no certificate
        assert raw_tls(p, context(good / "ca.pem", other)) == "refused", a
        assert raw_tls(p, context(good / "ca.pem", good)) == "open", a
    assert not Path(marker).exists()

    # the marker mechanism works: with the client certificate, run() does run
    with Client(address, security=good_security(cluster), timeout=30) as c:
        assert list(c.run(touch, marker).values()) == [marker]
    assert Path(marker).read_text() == "ran"


def test_gram_on_tls_cluster_equals_in_process(cluster, tmp_path):
    x = np.random.default_rng(0).standard_normal((40, 6))
    arch = A.fc(2, b_std=0.1)
    ref = nc.kernel(arch, x)
    with Client(cluster["address"], security=good_security(cluster), timeout=30) as c:
        job = workers.compute_gram(arch, x, store=str(tmp_path / "api"), tile=16,
                                   client=c).wait()
        np.testing.assert_allclose(job.to_numpy()["ntk"], ref["ntk"], rtol=1e-12, atol=0)
        assert job.tiles_total == 6

    # ntk gram with the NTK_TLS_* variables alone
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    args = ["gram", "--arch", str(tmp_path / "arch.json"), "--x1", str(tmp_path / "x.npy"),
            "--out", str(tmp_path / "cli"), "--tile", "16", "--quiet",
            "--scheduler", cluster["address"]]
    r = ntk(*args, env={**plain_env(), **tls_env(cluster["good"])}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["tiles"] == 6
    k = zarr.open_group(str(tmp_path / "cli"), mode="r")["ntk"][...]
    np.testing.assert_allclose(k, ref["ntk"], rtol=1e-12, atol=0)
    # without them: a clear error before anything connects or is written
    args[args.index("--out") + 1] = str(tmp_path / "refused")
    r = ntk(*args, env=plain_env())
    assert r.returncode == 2 and "needs TLS" in r.stderr and "NTK_TLS_CA_FILE" in r.stderr
    assert not (tmp_path / "refused").exists()


def test_embedded_cluster_speaks_tls_on_loopback():
    client, cluster = get_client(n_workers=1, reuse_default=False)
    try:
        address = client.scheduler.address
        assert address.startswith("tls://127.0.0.1:")
        assert all(a.startswith("tls://127.0.0.1:") for a in client.scheduler_info()["workers"])
        assert next(iter(client.run(os.getpid).values())) != os.getpid()  # a worker process
        with pytest.raises(Exception):  # noqa: B017
            Client(address.replace("tls://", "tcp://"), timeout=3).run(os.getpid)
    finally:
        client.close()
        cluster.close()
