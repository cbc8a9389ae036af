"""The ``ntk`` commands that run on the Dask side: jobs, certificates and cluster roles.

    ntk gram --arch arch.json --x1 train.npy [--x2 test.npy] --out STORE [--tile T]
             [--scheduler tls://host:8786] [--dtype float32] [--memory 1GiB] [--get ntk]
             [--verify] [--depths 1,2,3 [--variants 0,1,2] [--b-stds 0,1]]
             [--zca 0.1] [--standardize] [--flip]
    ntk verify STORE | KERNEL_JOB_ID   (every chunk read back through its checksum)
    ntk solve --kernel STORE --labels y.npy --lambda 1e-3 [--relative] [--solver cg|direct]
              [--precond nystrom|randomized|jacobi|none] [--rank R] [--tol T]
              [--cross CROSS_STORE --test-labels y_test.npy]
              [--times 0,1,10] [--bound] [--spectrum K] [--variance] [--depth D]
              [--variant V] [--b-std B]
    ntk solve --kernel k-... --lambda 1e-3 [--labels y.npy] [--wait] [...]
              (a solve of the service's kernel job, printed with its id s-...)

The cross store is test x train, ``(m, n)``: ``ntk gram --x1 test.npy --x2 train.npy``; one
of another shape is refused before the solve.

Cluster roles (what the containers of docker-compose.yml and deploy/k8s run)::

    ntk certs --out DIR [--days 825] [--roles scheduler,worker,client] [--force]
              [--k8s-secrets FILE] [--namespace NS]
    ntk scheduler [--host 0.0.0.0] [--port 8786] [--dashboard-port 8787] [--insecure]
                  [--tls-ca-file ca.pem --tls-cert scheduler.pem --tls-key scheduler-key.pem]
    ntk worker [--scheduler tls://host:8786] [--nprocs N] [--memory-limit 4GiB]
               [--tls-ca-file ca.pem --tls-cert worker.pem --tls-key worker-key.pem]

Dask comms are mutual TLS: every process presents a certificate from the cluster's CA
(``ntk certs``). The ``--tls-*`` flags default to ``$NTK_TLS_CA_FILE``, ``$NTK_TLS_CERT`` and
``$NTK_TLS_KEY``; ``ntk gram``/``ntk solve`` read those variables to join a ``tls://``
scheduler. ``ntk scheduler`` refuses plain TCP except on loopback or with ``--insecure``.

The service and its client add ``ntk serve``, ``ntk keys create``, ``ntk submit``,
``ntk status`` and ``ntk fetch`` (see :mod:`ntkcli.serve`).

``--x1``/``--x2`` take ``.npy`` files, ``.npz`` files (array ``x``) or dataset URLs written by
``workers.write_dataset``. Rerunning the same command resumes the job.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ntkcompute.errors import InputError

from .inputs import (
    float_list,
    int_list,
    load_array,
    memory_limit,
    preprocess_args,
    preprocess_of,
    read_arch,
    size,
)


def _gram(args: argparse.Namespace) -> int:
    from workers import GramJobError, compute_gram

    _check_scheduler_tls(args.scheduler)
    arch = read_arch(args.arch)
    job = compute_gram(arch, load_array(args.x1, "x1", urls=True),
                       load_array(args.x2, "x2", urls=True) if args.x2 else None,
                       store=args.out, tile=args.tile, scheduler=args.scheduler,
                       get=tuple(args.get.split(",")), dtype=args.dtype, memory=args.memory,
                       verify=args.verify, depths=args.depths, variants=args.variants,
                       b_stds=args.b_stds, preprocess=preprocess_of(args))
    # Ctrl-C / SIGTERM only set a flag: a KeyboardInterrupt raised inside a Dask call can be
    # swallowed there, and the job would then run on to the end.
    interrupted = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: interrupted.set())
    job.watch(stop=interrupted, disable=args.quiet)
    if interrupted.is_set():
        job.cancel()
        job.close()
        print(f"ntk gram: interrupted; finished tiles are kept in {args.out}: rerun the same "
              "command to resume", file=sys.stderr)
        return 130
    try:
        job.wait()
    except GramJobError as e:
        print(f"ntk gram: job failed: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"store": args.out, "tiles": job.tiles_total,
                      "reused": job.tiles_reused, "computed": job.tiles_computed,
                      "arrays": {k: list(v.shape) for k, v in job.arrays.items()}}))
    return 0


def _solve(args: argparse.Namespace) -> int:
    """``ntk solve``: on a kernel job of the service (``--kernel k-...``: a remote solve,
    :func:`ntkcli.serve.remote_solve`) or on a store of ``ntk gram`` (on the Dask cluster)."""
    if args.kernel.startswith("k-"):
        from .serve import remote_solve

        return remote_solve(args)
    from workers import solve

    for flag, given in (("--wait", args.wait), ("--url", args.url_given),
                        ("--api-key", args.api_key_given)):
        if given:
            raise InputError("only a solve on the service (--kernel k-...) takes it; a solve "
                             "on a store runs here and always waits", field=flag)
    if args.labels is None:
        raise InputError("required for a solve on a store (the service's jobs default to "
                         "their datasets' y)", field="labels")
    _check_scheduler_tls(args.scheduler)
    labels = np.asarray(load_array(args.labels, "labels", urls=True))
    test_labels = np.asarray(load_array(args.test_labels, "test_labels", urls=True)) \
        if args.test_labels else None
    lams = args.lam
    save = args.save or "default"
    res = solve(args.kernel, labels, lams if len(lams) > 1 else lams[0], solver=args.solver,
                name=args.name, tol=args.tol, maxiter=args.maxiter,
                preconditioner=None if args.precond == "none" else args.precond,
                rank=args.rank, cross=args.cross, test_labels=test_labels,
                scheduler=args.scheduler, save=save, times=args.times,
                bound=args.bound, spectrum_k=args.spectrum, relative=args.relative,
                min_eig=args.min_eigenvalue, variance=args.variance, depth=args.depth,
                variant=args.variant, b_std=args.b_std)
    print(json.dumps({"solver": res.solver, "lambda": res.lams, "iterations": res.iterations,
                      "converged": res.converged, "seconds": round(res.seconds, 3),
                      "metrics": res.metrics, "analyses": res.analyses,
                      "saved": f"{args.kernel}/solves/{save}"}))
    return 0 if res.converged else 1


def add_client_arguments(p: argparse.ArgumentParser) -> None:
    """``--url`` (default ``$NTK_URL``) and ``--api-key`` (default ``$NTK_API_KEY``) of the
    service; ``args.url_given`` / ``args.api_key_given`` say whether they were on the line."""

    class _Given(argparse.Action):
        def __call__(self, parser: argparse.ArgumentParser, ns: argparse.Namespace,
                     values: Any, option_string: str | None = None) -> None:
            setattr(ns, self.dest, values)
            setattr(ns, f"{self.dest}_given", True)

    p.add_argument("--url", action=_Given,
                   default=os.environ.get("NTK_URL", "http://127.0.0.1:8000"),
                   help="the service (default $NTK_URL, else http://127.0.0.1:8000)")
    p.add_argument("--api-key", action=_Given, default=os.environ.get("NTK_API_KEY"),
                   help="an API key (default $NTK_API_KEY)")
    p.set_defaults(url_given=False, api_key_given=False)


def add_tls_arguments(p: argparse.ArgumentParser) -> None:
    """``--tls-ca-file``, ``--tls-cert``, ``--tls-key`` (defaults: ``$NTK_TLS_*``)."""
    p.add_argument("--tls-ca-file", default=None,
                   help="CA certificate of the cluster, PEM (default $NTK_TLS_CA_FILE)")
    p.add_argument("--tls-cert", default=None,
                   help="this process's certificate, PEM (default $NTK_TLS_CERT)")
    p.add_argument("--tls-key", default=None,
                   help="this process's private key, PEM (default $NTK_TLS_KEY)")


def _tls(args: argparse.Namespace) -> Any:
    from workers.cluster import tls_files

    return tls_files(args.tls_ca_file, args.tls_cert, args.tls_key)


def _is_loopback(host: str) -> bool:
    host = host.partition("://")[2] if "://" in host else host
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_scheduler_tls(scheduler: str | None) -> None:
    """Fail fast (exit 2) on a ``tls://`` address without the ``NTK_TLS_*`` files."""
    from workers.cluster import SCHEDULER_ENV, check_address, security_from

    address = scheduler or os.environ.get(SCHEDULER_ENV)
    if address:
        check_address(address, security_from())


# Dask reads this at import: with it, a TLS process also refuses to connect out in plain.
_REQUIRE_ENCRYPTION = {"DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True"}


def _scheduler(args: argparse.Namespace) -> int:
    """Exec a Dask scheduler (the cluster's pinned ``distributed``): mutual TLS with the
    ``--tls-*`` files; plain TCP only on loopback or with ``--insecure``."""
    tls = _tls(args)
    cmd = [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", args.host,
           "--port", str(args.port), "--dashboard-address", f":{args.dashboard_port}"]
    env = dict(os.environ)
    if tls is not None:
        cmd += ["--protocol", "tls", "--tls-ca-file", tls.ca_file, "--tls-cert", tls.cert,
                "--tls-key", tls.key]
        env.update(_REQUIRE_ENCRYPTION)
    elif not (args.insecure or _is_loopback(args.host)):
        raise InputError(
            f"refusing to listen on {args.host} without TLS: anyone who reaches the port "
            "could run code on the workers. Pass --tls-ca-file, --tls-cert and --tls-key "
            "(or set NTK_TLS_CA_FILE, NTK_TLS_CERT, NTK_TLS_KEY; make them with `ntk certs`), "
            "or --insecure", field="tls")
    else:
        print(f"ntk scheduler: WARNING: plain TCP without authentication on {args.host}: "
              "whoever reaches the port can run code on the workers", file=sys.stderr)
    os.execve(sys.executable, cmd, env)
    return 0  # not reached


def _worker(args: argparse.Namespace) -> int:
    """Dask worker processes with one thread each (the kernels are NumPy-bound: a process
    per core scales them, bench/gram.py): as many as the cores this process may use (its
    affinity and cgroup CPU quota), each with an equal share of its cgroup's memory. With
    GPUs, one process per visible GPU, each pinned to its device through
    CUDA_VISIBLE_DEVICES (what dask-cuda does, without it).
    With the ``--tls-*`` files the workers and their nannies listen and connect with TLS.
    What they write to a local store is private to their user (umask 077)."""
    from ntkcompute import backend

    os.umask(0o077)

    from workers.cluster import (
        SCHEDULER_ENV,
        check_address,
        make_security,
        usable_cores,
        usable_memory,
    )

    address = args.scheduler or os.environ.get(SCHEDULER_ENV)
    if not address:
        raise InputError(f"no scheduler: pass --scheduler or set {SCHEDULER_ENV}",
                         field="scheduler")
    tls = _tls(args)
    address = check_address(address, make_security(*tls) if tls else None)
    gpus = backend.gpu_count() if os.environ.get("NTKCOMPUTE_DEVICE", "auto") != "cpu" else 0
    procs = args.nprocs or (1 if gpus else usable_cores())
    memory = args.memory_limit
    if memory == "auto":  # this process's own cgroup counts, not only the host's memory
        memory = str(usable_memory() // (procs if gpus <= 1 else gpus))
    print(f"ntk worker: {procs if gpus <= 1 else gpus} process(es) of {memory} bytes, "
          f"{usable_cores()} usable cores", file=sys.stderr, flush=True)
    base = [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
            "--memory-limit", memory, "--no-dashboard"]
    env = dict(os.environ)
    if tls is not None:
        base += ["--tls-ca-file", tls.ca_file, "--tls-cert", tls.cert, "--tls-key", tls.key]
        env.update(_REQUIRE_ENCRYPTION)
    if args.name:
        base += ["--name", args.name]
    if gpus <= 1:
        os.execve(sys.executable, [*base, "--nworkers", str(procs)], env)
    import subprocess

    visible = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(gpus))))
    children = [subprocess.Popen([*base, "--nworkers", "1"],
                                 env={**env, "CUDA_VISIBLE_DEVICES": dev})
                for dev in visible.split(",")[:gpus]]

    def stop(signum: int, _frame: Any) -> None:
        for c in children:
            c.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return max(c.wait() for c in children)


def _worker_health(args: argparse.Namespace) -> int:
    """Exit 0 when the scheduler has at least one worker on this host (a container's
    healthcheck: ``ntk worker-health``), 1 otherwise; with the same TLS files as the worker."""
    import socket

    from distributed import Client

    from workers.cluster import SCHEDULER_ENV, check_address, make_security

    address = args.scheduler or os.environ.get(SCHEDULER_ENV)
    if not address:
        raise InputError(f"no scheduler: pass --scheduler or set {SCHEDULER_ENV}",
                         field="scheduler")
    tls = _tls(args)
    security = make_security(*tls) if tls else None
    name = socket.gethostname()
    mine = {"127.0.0.1", name, *socket.gethostbyname_ex(name)[2]}
    with Client(check_address(address, security), security=security, timeout=args.timeout,
                name="ntk-worker-health") as c:
        hosts = [w["host"] for w in c.scheduler_info()["workers"].values()]
    here = [h for h in hosts if h in mine]
    print(f"{len(here)} worker(s) of this host ({name}) on the scheduler, "
          f"{len(hosts)} in all")
    return 0 if here else 1


def _certs(args: argparse.Namespace) -> int:
    """A new cluster CA and one certificate per role (see :mod:`workers.certs`)."""
    from workers.certs import check_namespace, parse_roles, write_bundle, write_k8s_secrets

    roles = parse_roles(args.roles)
    if args.namespace is not None and not args.k8s_secrets:
        raise InputError("--namespace needs --k8s-secrets", field="namespace")
    check_namespace(args.namespace)
    if args.k8s_secrets and Path(args.k8s_secrets).exists() and not args.force:
        raise InputError(f"refusing to overwrite {args.k8s_secrets} (pass --force)",
                         field="k8s_secrets")
    paths = write_bundle(args.out, roles, args.days, force=args.force)
    out: dict[str, Any] = {"out": args.out, "files": {k: str(v) for k, v in paths.items()}}
    if args.k8s_secrets:
        write_k8s_secrets(args.k8s_secrets, args.out, roles, args.namespace, force=True)
        out["k8s_secrets"] = args.k8s_secrets
    print(json.dumps(out))
    return 0


def register(sub: Any) -> None:
    """Add ``gram``, ``solve``, ``scheduler``, ``worker`` and ``certs`` to the ``ntk``
    parser's subparsers."""
    g = sub.add_parser("gram", help="compute a Gram matrix on a Dask cluster into Zarr")
    g.add_argument("--arch", required=True, help="architecture spec (JSON file)")
    g.add_argument("--x1", required=True, help=".npy, .npz (array x) or dataset URL")
    g.add_argument("--x2", help="second inputs (cross kernel); omit for the symmetric Gram")
    g.add_argument("--out", required=True, help="URL of the job's Zarr group")
    g.add_argument("--tile", type=int, default=None, help="tile side (default: automatic)")
    g.add_argument("--scheduler", default=None,
                   help="Dask scheduler address (default $NTK_SCHEDULER_ADDRESS or local)")
    g.add_argument("--dtype", default=None, choices=["float32", "float64"],
                   help="computation and storage dtype (default: float32 where verified)")
    g.add_argument("--memory", type=size, default=1 << 30,
                   help="working memory per task: bytes or a size such as 4GiB (default 1GiB)")
    g.add_argument("--get", default="ntk,nngp", help="ntk,nngp (comma separated)")
    g.add_argument("--verify", action="store_true",
                   help="before resuming, read back every stored chunk through its checksum "
                   "and recompute exactly the damaged tiles (see `ntk verify`)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--depths", type=int_list, default=None,
                   help="a kernel family: the repeat counts of the architecture's one "
                   "top-level repeat, comma separated; every member from one pass, stored "
                   "(D, n1, n2)")
    g.add_argument("--variants", type=int_list, default=None,
                   help="with --depths: each member's NTK also with its stem and first v "
                   "repeats fixed, for each v, comma separated (0: every layer trained); "
                   "the NTK is stored (D, V, n1, n2)")
    g.add_argument("--b-stds", type=float_list, default=None,
                   help="with --depths: a bias grid, every member for each value of every "
                   "layer's b_std, comma separated (a leading b_std axis)")
    preprocess_args(g)
    g.set_defaults(func=_gram)
    s = sub.add_parser("solve", help="kernel regression on a stored kernel (ntk gram) or on "
                       "a kernel job of the service (k-...)")
    s.add_argument("--kernel", required=True,
                   help="URL of the train kernel job (ntk gram), or a kernel job id k-... of "
                   "the service (a remote solve: prints its id s-..., see --wait)")
    s.add_argument("--labels", help=".npy: (n,) int classes or float targets (required for a "
                   "store; a service job defaults to its train dataset's y)")
    s.add_argument("--lambda", dest="lam", required=True, type=float_list,
                   help="ridge λ (absolute unless --relative); a comma list sweeps λ")
    s.add_argument("--relative", action="store_true",
                   help="λ values are multiples of mean(diag K)")
    s.add_argument("--solver", choices=["cg", "direct"], default="cg",
                   help="distributed CG, or a direct solve in memory")
    s.add_argument("--name", choices=["ntk", "nngp"], default="ntk", help="which kernel")
    s.add_argument("--tol", type=float, default=1e-8,
                   help="CG: relative residual to stop at")
    s.add_argument("--maxiter", type=int, default=1000, help="CG: most iterations")
    s.add_argument("--precond", choices=["nystrom", "randomized", "jacobi", "none"],
                   default="nystrom", help="CG preconditioner")
    s.add_argument("--rank", type=int, default=100,
                   help="Nystrom rank (randomized: the first sketch, then doubled)")
    s.add_argument("--cross", help="URL of the test x train kernel job, (m, n), to predict "
                   "(ntk gram --x1 test --x2 train); a service job predicts on its test set")
    s.add_argument("--test-labels", help=".npy labels of the test rows, to score")
    s.add_argument("--scheduler", default=None,
                   help="Dask scheduler to join (default $NTK_SCHEDULER_ADDRESS, else embedded)")
    s.add_argument("--save", default=None,
                   help="name under solves/ in the kernel store (default 'default')")
    s.add_argument("--times", type=float_list,
                   help="gradient-flow times t, comma separated (direct)")
    s.add_argument("--bound", action="store_true", help="report sqrt(2 y' K^-1 y / n)")
    s.add_argument("--spectrum", type=int, default=0, help="top-k eigenvalues of K")
    s.add_argument("--min-eigenvalue", action="store_true",
                   help="report λmin(K) (exact with direct, a Lanczos estimate with cg)")
    s.add_argument("--variance", action="store_true",
                   help="predictive variance of every test output (direct, needs --cross "
                   "and the NNGP): the NNGP posterior's or the trained ensemble's; saved as "
                   "variances beside the solve, means in the metrics")
    s.add_argument("--depth", type=int, default=None,
                   help="the member of a family job (ntk gram --depths) to solve on")
    s.add_argument("--variant", type=int, default=None,
                   help="with --depth: the NTK variant of a family job with --variants")
    s.add_argument("--b-std", type=float, default=None,
                   help="with --depth: the value of a family job's bias grid (--b-stds)")
    s.add_argument("--wait", action="store_true",
                   help="a remote solve: wait until it ends and print it with its metrics "
                   "(default: print it as created, status queued)")
    add_client_arguments(s)
    s.set_defaults(func=_solve)
    sc = sub.add_parser("scheduler", help="run a Dask scheduler for ntkcompute workers")
    sc.add_argument("--host", default="0.0.0.0", help="interface to listen on")
    sc.add_argument("--port", type=int, default=8786, help="scheduler port")
    sc.add_argument("--dashboard-port", type=int, default=8787, help="Dask dashboard port")
    add_tls_arguments(sc)
    sc.add_argument("--insecure", action="store_true",
                    help="allow plain TCP on a non-loopback host (no authentication)")
    sc.set_defaults(func=_scheduler)
    w = sub.add_parser("worker", help="run Dask worker processes (one per core, or per GPU)")
    w.add_argument("--scheduler", default=None, help="default $NTK_SCHEDULER_ADDRESS")
    w.add_argument("--nprocs", type=int, default=None,
                   help="worker processes (default: one per usable core, counting CPU "
                   "affinity and the cgroup's CPU quota; one per GPU with GPUs)")
    w.add_argument("--memory-limit", type=memory_limit, default="auto",
                   help="per process: auto (an equal share of the host's or the cgroup's "
                   "memory, the smaller), or a size such as 4GiB or a byte count")
    w.add_argument("--name", default=None, help="worker name prefix")
    add_tls_arguments(w)
    w.set_defaults(func=_worker)
    wh = sub.add_parser("worker-health", help="exit 0 when this host's workers are connected "
                        "to the scheduler (a container healthcheck)")
    wh.add_argument("--scheduler", default=None, help="default $NTK_SCHEDULER_ADDRESS")
    wh.add_argument("--timeout", type=float, default=10.0, help="seconds to connect")
    add_tls_arguments(wh)
    wh.set_defaults(func=_worker_health)
    ce = sub.add_parser("certs", help="make a cluster CA and TLS certificates per role")
    ce.add_argument("--out", required=True, help="directory for the PEM files (made 0700)")
    ce.add_argument("--days", type=int, default=825, help="validity of every certificate")
    ce.add_argument("--roles", default="scheduler,worker,client",
                    help="comma separated; 'client' is for the API service and CLI users")
    ce.add_argument("--force", action="store_true", help="overwrite existing files")
    ce.add_argument("--k8s-secrets", default=None,
                    help="also write a YAML stream of Secrets ntk-tls-<role> to this file")
    ce.add_argument("--namespace", default=None, help="metadata.namespace of the Secrets")
    ce.set_defaults(func=_certs)
