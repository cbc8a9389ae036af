"""deploy/: docker-compose.yml through `docker compose config`, the Kubernetes manifests through
kubernetes-validate --strict and the Dask operator's CRD schemas, and every env var, port and
command they name checked against what the code reads and accepts.

And that the deployment does not expose the cluster: only the api is published (the dashboard
and MinIO console only on loopback, by an opt-in override), every Dask process has mutual TLS
wired to the files `ntk certs` really writes, each container gets only the credentials its
role needs, NetworkPolicy fences the scheduler and workers off, and every pod runs restricted
(non-root, read-only root filesystem, no capabilities)."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest
import tomllib
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from packaging.requirements import Requirement

from ntkcli.main import build_parser
from service.config import ENV
from workers import certs
from workers.cluster import TLS_ENV, check_address, make_security, tls_files

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
K8S = ROOT / "deploy" / "k8s"
OUR_IMAGES = ("ntkcompute:", "ntkcompute-gpu:")
DASHBOARD_OVERRIDE = ROOT / "deploy" / "compose.dashboard.yml"
UID = 10001  # the images' user (deploy/Dockerfile*), the pods' runAsUser/runAsGroup/fsGroup
TLS_VARS = tuple(TLS_ENV.values())  # NTK_TLS_CA_FILE, NTK_TLS_CERT, NTK_TLS_KEY
# compose service (or k8s pod) -> the `ntk certs` role whose certificate it presents
COMPOSE_ROLES = {"scheduler": "scheduler", "worker": "worker", "worker-gpu": "worker",
                 "api": "client"}


def env_vars_the_code_reads() -> set[str]:
    """Every literal name passed to os.environ.get / os.environ[...] / os.getenv in the
    packages, plus the service's Settings table (service.config.ENV)."""
    names = set(ENV.values())
    for pkg in ("ntkcompute", "workers", "service", "ntkcli"):
        for f in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.Call) and ast.unparse(node.func) in (
                        "os.environ.get", "os.getenv") and node.args:
                    arg = node.args[0]
                elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
                    arg = node.slice
                else:
                    continue
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    names.add(arg.value)
                elif isinstance(arg, ast.Name):  # a module constant, e.g. SCHEDULER_ENV
                    src = f.read_text()
                    m = re.search(rf'^{arg.id}\s*=\s*"([A-Z_]+)"', src, re.M)
                    if m:
                        names.add(m.group(1))
    return names


CODE_ENV = env_vars_the_code_reads()


def ours(name: str) -> bool:
    return name.startswith(("NTK_", "NTKCOMPUTE_"))


def check_command(cmd: list[str]) -> None:
    """The container command parses with the real `ntk` parser, and never opts out of TLS."""
    assert cmd[0] == "ntk", cmd
    args = [a.replace("$(DASK_WORKER_NAME)", "w-1") for a in cmd[1:]]
    parsed = build_parser().parse_args(args)
    assert not getattr(parsed, "insecure", False), cmd


def cert_role(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def check_tls_files(env: dict[str, str], role: str, monkeypatch) -> None:
    """The NTK_TLS_* files of a container (already materialised at those paths) are what
    `workers.cluster` accepts: all three readable, the certificate the role's, signed by the
    CA, with the matching private key, and the scheduler address usable with them."""
    for var in TLS_VARS:
        monkeypatch.setenv(var, env[var])
    files = tls_files()
    assert files is not None
    ca = x509.load_pem_x509_certificate(Path(files.ca_file).read_bytes())
    pem = Path(files.cert).read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    assert cert_role(pem) == role, (files.cert, role)
    cert.verify_directly_issued_by(ca)
    key = serialization.load_pem_private_key(Path(files.key).read_bytes(), None)
    assert key.public_key() == cert.public_key(), "tls.key is not the key of tls.crt"
    if "NTK_SCHEDULER_ADDRESS" in env:
        assert env["NTK_SCHEDULER_ADDRESS"].startswith("tls://")
        check_address(env["NTK_SCHEDULER_ADDRESS"], make_security(*files))


def test_the_code_reads_the_names_we_deploy_with():
    assert {"NTK_STORE", "NTK_DB_URL", "NTK_SCHEDULER_ADDRESS", "NTK_STORAGE_OPTIONS",
            "NTK_API_KEYS", "NTKCOMPUTE_DEVICE"} <= CODE_ENV


# docker-compose -----------------------------------------------------------------------------
def compose_config(*profiles: str, files: tuple[Path, ...] = (),
                   env: dict[str, str] | None = None) -> dict:
    """`docker compose config` of docker-compose.yml (plus override `files`), as JSON."""
    args = [str(BIN / "docker-compose"), "-f", str(ROOT / "docker-compose.yml")]
    for f in files:
        args += ["-f", str(f)]
    for p in profiles:
        args += ["--profile", p]
    run_env = None if env is None else {**os.environ, **env}
    out = subprocess.run([*args, "config", "--format", "json"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT, env=run_env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_compose_validates_and_wires_the_cluster():
    base, gpu = compose_config(), compose_config("gpu")
    assert set(base["services"]) == {"postgres", "minio", "minio-init", "scheduler", "worker",
                                     "api"}
    assert set(gpu["services"]) == set(base["services"]) | {"worker-gpu"}
    svc = gpu["services"]
    # env: every NTK_* / NTKCOMPUTE_* variable is one the code reads
    for name, s in svc.items():
        for var in s.get("environment") or {}:
            if ours(var):
                assert var in CODE_ENV, (name, var)
    # every container of our images runs a command the `ntk` parser accepts
    for s in svc.values():
        if s["image"].startswith(OUR_IMAGES):
            check_command(s["command"])
    # ports: the scheduler listens where NTK_SCHEDULER_ADDRESS points (TLS), the api where
    # published; the scheduler publishes nothing (test_compose_publishes_only_the_api)
    addr = svc["api"]["environment"]["NTK_SCHEDULER_ADDRESS"]
    assert addr.startswith("tls://"), addr
    host, port = addr.removeprefix("tls://").split(":")
    assert host == "scheduler" and port in svc["scheduler"]["command"]
    assert "ports" not in svc["scheduler"]
    assert [p["target"] for p in svc["api"]["ports"]] == [8000]
    assert "8000" in svc["api"]["command"]
    # the store is the MinIO service, the DB the PostgreSQL service
    opts = json.loads(svc["api"]["environment"]["NTK_STORAGE_OPTIONS"])
    assert opts["client_kwargs"]["endpoint_url"] == "http://minio:9000"
    assert svc["api"]["environment"]["NTK_STORE"].startswith("s3://")
    assert "@postgres:5432/" in svc["api"]["environment"]["NTK_DB_URL"]
    assert svc["worker"]["environment"]["NTK_STORAGE_OPTIONS"] == \
        svc["api"]["environment"]["NTK_STORAGE_OPTIONS"]
    # GPU workers: NVIDIA device reservations, the GPU image, only in the gpu profile
    dev = svc["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert dev["driver"] == "nvidia" and "gpu" in dev["capabilities"]
    assert svc["worker-gpu"]["build"]["dockerfile"] == "deploy/Dockerfile.gpu"
    # health checks on every long-running service (minio-init runs once and exits)
    for name, s in svc.items():
        if name != "minio-init":
            assert s["healthcheck"]["test"], name
    for name in ("worker", "worker-gpu"):  # connected to the scheduler, not only alive
        assert svc[name]["healthcheck"]["test"][-1] == "worker-health"
        assert float(svc[name]["cpus"]) >= 1 and int(svc[name]["mem_limit"]) >= 1 << 30
    assert build_parser().parse_args(["worker-health"]).func.__name__ == "_worker_health"


# Dockerfiles and the pinned environment ---------------------------------------------------------
def test_one_pinned_environment():
    cpu = (ROOT / "deploy" / "Dockerfile").read_text()
    gpu = (ROOT / "deploy" / "Dockerfile.gpu").read_text()
    py = [re.search(r"^ARG PYTHON=(\d+\.\d+)$", t, re.M).group(1) for t in (cpu, gpu)]
    assert py[0] == py[1]  # the same Python minor in every container
    for t in (cpu, gpu):
        assert "pip install -c deploy/constraints.txt" in t
    pins = {}
    for line in (ROOT / "deploy" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    assert pins["dask"] == pins["distributed"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for spec in project["dependencies"] + extras["postgres"] + extras["s3"] + extras["gpu"]:
        req = Requirement(spec)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in deploy/constraints.txt"
        assert req.specifier.contains(pins[name]), (spec, pins[name])
    # the dev venv is made with the same file: every pinned package it has is at its pin
    assert "pip install -q -c deploy/constraints.txt -e '.[dev]'" in (
        ROOT / "Makefile").read_text()
    have = {d.metadata["Name"].lower().replace("_", "-"): d.version
            for d in importlib.metadata.distributions()}
    off = {n: (have[n], v) for n, v in pins.items() if n in have and have[n] != v}
    assert not off, f"installed (venv, pin): {off}"
    assert have["dask"] == pins["dask"] and have["bokeh"] == pins["bokeh"]


# Kubernetes ---------------------------------------------------------------------------------------
def k8s_docs() -> list[tuple[str, dict]]:
    out = []
    for f in sorted(K8S.glob("*.yaml")):
        if f.name != "kustomization.yaml":
            out += [(f.name, d) for d in yaml.safe_load_all(f.read_text()) if d]
    return out


def test_builtin_manifests_pass_kubernetes_validate_strict(tls_bundle):
    files = [str(f) for f in sorted(K8S.glob("*.yaml")) if f.name != "kustomization.yaml"]
    # and the TLS Secrets `ntk certs --k8s-secrets` writes, which the pods mount
    out = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", *files,
                          str(tls_bundle["k8s"])],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    passed = out.stdout + out.stderr
    for kind in ("configmap/ntk-config", "secret/ntk-store", "secret/ntk-api",
                 "deployment/ntk-api", "service/ntk-api",
                 "networkpolicy/ntk-default-deny-ingress", "networkpolicy/ntk-scheduler",
                 "networkpolicy/ntk-workers", "networkpolicy/ntk-api",
                 "secret/ntk-tls-scheduler", "secret/ntk-tls-worker", "secret/ntk-tls-client"):
        assert f"passed for resource {kind}" in passed, kind
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(files_ := [Path(f).name for f in files]), files_


def _strict(schema: object) -> object:
    """Reject unknown fields as the API server's structural pruning would drop them."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def crd_schemas() -> dict[str, dict]:
    wheels = sorted((Path(sys.prefix) / "vendor").glob("dask_kubernetes-*.whl"))
    assert wheels, ("the Dask operator's CRDs are missing: `make test` downloads them into "
                    ".venv/vendor")
    out = {}
    with zipfile.ZipFile(wheels[-1]) as z:
        base = "dask_kubernetes/operator/deployment/helm/dask-kubernetes-operator/crds/"
        for name in ("daskcluster.yaml", "daskworkergroup.yaml"):
            crd = yaml.safe_load(z.read(base + name))
            version = crd["spec"]["versions"][0]
            schema = _strict(version["schema"]["openAPIV3Schema"])
            # implicit in every Kubernetes object, not listed in a CRD's schema
            schema["properties"].update(apiVersion={"type": "string"},
                                        kind={"type": "string"}, metadata={"type": "object"})
            out[crd["spec"]["names"]["kind"]] = schema
    return out


def test_dask_operator_resources_match_the_crds():
    schemas = crd_schemas()
    kinds = [d["kind"] for _, d in k8s_docs()]
    assert {"DaskCluster", "DaskWorkerGroup"} <= set(kinds)
    for _, doc in k8s_docs():
        if doc["apiVersion"] == "kubernetes.dask.org/v1":
            jsonschema.validate(doc, schemas[doc["kind"]])
    bad = next(d for _, d in k8s_docs() if d["kind"] == "DaskCluster")
    bad = json.loads(json.dumps(bad))
    bad["spec"]["worker"]["replicaz"] = 3  # the strict schema does catch a typo
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schemas["DaskCluster"])


def _containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    pods = [spec.get("template", {}).get("spec"), spec.get("worker", {}).get("spec"),
            spec.get("scheduler", {}).get("spec")]
    return [c for p in pods if p for c in p.get("containers", [])]


def test_k8s_env_ports_commands_and_gpus():
    docs = k8s_docs()
    config = next(d for _, d in docs if d["kind"] == "ConfigMap")
    secrets = [d for _, d in docs if d["kind"] == "Secret"]
    for var in [*config["data"], *(v for s in secrets for v in s["stringData"])]:
        assert var in CODE_ENV, var
    for _, d in docs:
        for c in _containers(d):
            assert c["image"].startswith(OUR_IMAGES)
            check_command(c["args"])
            for e in c.get("env", []):
                assert not ours(e["name"]) or e["name"] in CODE_ENV, e
            refs = {r.get("configMapRef", r.get("secretRef"))["name"]
                    for r in c.get("envFrom", [])}
            # the workers: configuration + store; the api also its DB and keys; the
            # scheduler nothing (test_k8s_each_pod_gets_only_its_secrets checks all refs)
            assert refs == {"worker": {"ntk-config", "ntk-store"},
                            "api": {"ntk-config", "ntk-store", "ntk-api"},
                            "scheduler": set()}[c["name"]], (c["name"], refs)
    # the scheduler address names the operator's scheduler Service and its comm port, in TLS
    cluster = next(d for _, d in docs if d["kind"] == "DaskCluster")
    addr = config["data"]["NTK_SCHEDULER_ADDRESS"]
    assert addr == f"tls://{cluster['metadata']['name']}-scheduler:8786"
    sched = cluster["spec"]["scheduler"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in sched["ports"]} == {8786, 8787}
    assert {p["port"] for p in cluster["spec"]["scheduler"]["service"]["ports"]} == {8786, 8787}
    # api: Service -> named container port -> --port
    api = next(d for _, d in docs if d["kind"] == "Deployment")
    c = api["spec"]["template"]["spec"]["containers"][0]
    svc = next(d for _, d in docs if d["kind"] == "Service")
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert named[svc["spec"]["ports"][0]["targetPort"]] == 8000
    assert c["args"][c["args"].index("--port") + 1] == "8000"
    assert api["spec"]["replicas"] == 1 and api["spec"]["strategy"]["type"] == "Recreate"
    # GPU workers: the GPU image, an nvidia.com/gpu limit, GPU nodes only
    group = next(d for _, d in docs if d["kind"] == "DaskWorkerGroup")
    pod = group["spec"]["worker"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["containers"][0]["image"].startswith("ntkcompute-gpu:")
    assert pod["nodeSelector"] and group["spec"]["cluster"] == cluster["metadata"]["name"]


def test_readme_commands_name_real_flags():
    """Every `ntk ...` line in README's Deploy section parses."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Deploy"):]
    section = section[:section.index("\n## ", 5)] if "\n## " in section[5:] else section
    section = section.replace("\\\n", " ")  # continuation lines are one command
    lines = [ln.strip() for ln in section.splitlines() if ln.strip().startswith("ntk ")]
    assert lines and any("--tls-cert" in ln for ln in lines)
    for ln in lines:
        check_command(shlex.split(ln.split("#")[0]))


# Not exposing the cluster -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tls_bundle(tmp_path_factory):
    """What the operator makes: `ntk certs --out DIR --k8s-secrets FILE --namespace ntk`."""
    out = tmp_path_factory.mktemp("certs")
    k8s = out / "k8s-tls.yaml"
    args = build_parser().parse_args(["certs", "--out", str(out / "bundle"), "--k8s-secrets",
                                      str(k8s), "--namespace", "ntk"])
    assert args.func(args) == 0
    return {"dir": out / "bundle", "k8s": k8s,
            "secrets": {d["metadata"]["name"]: d
                        for d in yaml.safe_load_all(k8s.read_text()) if d}}


def _published(cfg: dict) -> list[tuple[str, dict]]:
    return [(name, p) for name, s in cfg["services"].items() for p in s.get("ports", [])]


def _all_compose_configs() -> dict[str, dict]:
    return {"base": compose_config(), "gpu": compose_config("gpu"),
            "dashboard": compose_config(files=(DASHBOARD_OVERRIDE,)),
            "dashboard+gpu": compose_config("gpu", files=(DASHBOARD_OVERRIDE,))}


def test_compose_publishes_only_the_api():
    cfgs = _all_compose_configs()
    for which, cfg in cfgs.items():
        for name, p in _published(cfg):
            # the scheduler's comm port is never reachable from outside the project network
            assert p["target"] != 8786 and str(p.get("published")) != "8786", (which, name, p)
            if name == "api":
                assert p["target"] == 8000, (which, p)
            else:  # only the opt-in override publishes anything else, and only on loopback
                assert which.startswith("dashboard"), (which, name, p)
                assert p.get("host_ip") == "127.0.0.1", (which, name, p)
        # nothing is exposed by other means either
        for name, s in cfg["services"].items():
            assert s.get("network_mode") != "host" and "expose" not in s, (which, name)
    for which in ("base", "gpu"):
        assert [n for n, _ in _published(cfgs[which])] == ["api"], which
    # the override does publish the dashboard and the console (on 127.0.0.1, checked above)
    dash = {(n, p["target"]) for n, p in _published(cfgs["dashboard"])}
    assert dash == {("api", 8000), ("scheduler", 8787), ("minio", 9001)}
    assert "--dashboard-port" in (cmd := cfgs["base"]["services"]["scheduler"]["command"])
    assert cmd[cmd.index("--dashboard-port") + 1] == "8787"
    # the scheduler's health check needs no published port: it runs inside the container
    assert "localhost:8787/health" in " ".join(
        cfgs["base"]["services"]["scheduler"]["healthcheck"]["test"])


def test_compose_tls_for_every_dask_role(tls_bundle, tmp_path, monkeypatch):
    """Each Dask service's NTK_TLS_* name /run/secrets files that are its role's files of the
    bundle `ntk certs --out deploy/certs` writes; materialised, `workers.cluster` accepts
    them with the tls:// scheduler address, and each certificate is its role's."""
    cfg = compose_config("gpu")
    svc, top = cfg["services"], cfg["secrets"]
    certs_dir = ROOT / "deploy" / "certs"
    written = {p.relative_to(tls_bundle["dir"]).as_posix(): p
               for p in certs.bundle_paths(tls_bundle["dir"], certs.ROLES).values()}
    for name, s in svc.items():
        if s["image"].startswith(OUR_IMAGES):
            assert name in COMPOSE_ROLES, f"{name}: which certificate does it present?"
    for name, role in COMPOSE_ROLES.items():
        env = svc[name]["environment"]
        assert set(TLS_VARS) <= set(env), name
        mounted = {}  # container path -> the bundle file (of the test bundle) behind it
        for m in svc[name]["secrets"]:
            target = m.get("target", m["source"])
            host = Path(top[m["source"]]["file"])
            assert host.parent == certs_dir, host  # made by `ntk certs --out deploy/certs`
            assert host.name in written, f"`ntk certs` writes no {host.name}"
            assert host.name != "ca-key.pem", "no container needs the CA's private key"
            mounted[target if target.startswith("/") else f"/run/secrets/{target}"] = \
                written[host.name]
        assert set(mounted) == {env[v] for v in TLS_VARS}, (name, mounted)
        # lay the files out as the container sees them, under tmp_path
        local = {}
        for var in TLS_VARS:
            dst = tmp_path / name / env[var].lstrip("/")
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(mounted[env[var]].read_bytes())
            local[var] = str(dst)
        if "NTK_SCHEDULER_ADDRESS" in env:
            local["NTK_SCHEDULER_ADDRESS"] = env["NTK_SCHEDULER_ADDRESS"]
        check_tls_files(local, role, monkeypatch)
    for name in ("worker", "worker-gpu", "api"):
        assert svc[name]["environment"]["NTK_SCHEDULER_ADDRESS"] == "tls://scheduler:8786"
    # the keys and the compose passwords never reach git or an image
    ignored = subprocess.run(["git", "check-ignore", "deploy/certs/worker-key.pem", ".env"],
                             capture_output=True, text=True, cwd=ROOT)
    assert ignored.stdout.split() == ["deploy/certs/worker-key.pem", ".env"], ignored
    dockerignore = (ROOT / ".dockerignore").read_text().split()
    assert "deploy/certs" in dockerignore and ".env" in dockerignore


def test_compose_credentials_per_service():
    """The MinIO root credentials only in minio and minio-init; the workers and the api use the
    bucket-scoped store user that minio-init creates; the DB URL and API keys only in the api;
    the scheduler gets nothing but its TLS files."""
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, s in raw["services"].items():
        if name not in ("minio", "minio-init"):
            assert "MINIO_ROOT" not in json.dumps(s), name
    env = {"MINIO_ROOT_USER": "root-user-x", "MINIO_ROOT_PASSWORD": "root-password-x",
           "NTK_STORE_USER": "store-user-x", "NTK_STORE_SECRET": "store-secret-x",
           "POSTGRES_PASSWORD": "pg-password-x", "NTK_API_KEYS": "api-keys-x"}
    svc = compose_config("gpu", files=(DASHBOARD_OVERRIDE,), env=env)["services"]

    def sees(name: str, value: str) -> bool:
        s = svc[name]
        return value in json.dumps([s.get("environment"), s.get("command"),
                                    s.get("entrypoint")])

    for name in svc:
        if name not in ("minio", "minio-init"):
            for v in ("root-user-x", "root-password-x"):
                assert not sees(name, v), (name, v)
        if name not in ("api", "postgres"):
            assert not sees(name, "pg-password-x"), name
        if name != "api":
            assert not sees(name, "api-keys-x"), name
    for name in ("worker", "worker-gpu", "scheduler"):
        assert not {"NTK_DB_URL", "NTK_API_KEYS"} & set(svc[name]["environment"]), name
    assert set(svc["scheduler"]["environment"]) == set(TLS_VARS)
    # workers and api: the store user, whose credentials minio-init gives to MinIO
    init = svc["minio-init"]
    for name in ("worker", "worker-gpu", "api"):
        opts = json.loads(svc[name]["environment"]["NTK_STORAGE_OPTIONS"])
        assert (opts["key"], opts["secret"]) == ("store-user-x", "store-secret-x"), name
        assert (init["environment"]["STORE_USER"], init["environment"]["STORE_SECRET"]) == \
            (opts["key"], opts["secret"])
    script = " ".join(init["command"])
    for step in ("mc admin policy create local ntk-store", "mc admin user add local",
                 "mc admin policy attach local ntk-store --user"):
        assert step in script, step
    # the policy minio-init installs allows the store's bucket and nothing else
    policy_target = next(c["target"] for c in init["configs"])
    assert policy_target in script
    policy_file = Path(compose_config()["configs"][init["configs"][0]["source"]]["file"])
    policy = json.loads(policy_file.read_text())
    bucket = svc["api"]["environment"]["NTK_STORE"].removeprefix("s3://").split("/")[0]
    resources = {r for st in policy["Statement"] for r in st["Resource"]}
    assert resources == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}, resources
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow"
        assert all(a.startswith("s3:") and "*" not in a for a in st["Action"]), st
    assert f"local/{bucket}" in script


def _pods() -> dict[str, tuple[dict, dict]]:
    """role -> (pod spec, pod labels as the pods will carry them)."""
    docs = dict(((d["kind"], d["metadata"]["name"]), d) for _, d in k8s_docs())
    cluster, group = docs["DaskCluster", "ntk"], docs["DaskWorkerGroup", "ntk-gpu"]
    api = docs["Deployment", "ntk-api"]
    name = cluster["metadata"]["name"]
    assert group["spec"]["cluster"] == name
    # the labels the Dask operator gives its pods (dask_kubernetes operator/controller)
    return {
        "scheduler": (cluster["spec"]["scheduler"]["spec"],
                      {"dask.org/cluster-name": name, "dask.org/component": "scheduler"}),
        "worker": (cluster["spec"]["worker"]["spec"],
                   {"dask.org/cluster-name": name, "dask.org/component": "worker",
                    "dask.org/workergroup-name": f"{name}-default"}),
        "worker-gpu": (group["spec"]["worker"]["spec"],
                       {"dask.org/cluster-name": name, "dask.org/component": "worker",
                        "dask.org/workergroup-name": group["metadata"]["name"]}),
        "api": (api["spec"]["template"]["spec"], api["spec"]["template"]["metadata"]["labels"]),
    }


def test_the_operator_labels_its_pods_as_the_policies_assume():
    wheel = sorted((Path(sys.prefix) / "vendor").glob("dask_kubernetes-*.whl"))[-1]
    with zipfile.ZipFile(wheel) as z:
        src = z.read("dask_kubernetes/operator/controller/controller.py").decode()
    for label in ('"dask.org/cluster-name": cluster_name', '"dask.org/component": "scheduler"',
                  '"dask.org/component": "worker"'):
        assert label in src, label


def _secret_refs(pod: dict) -> set[str]:
    refs = {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    for v in pod.get("volumes", []):
        for src in v.get("projected", {}).get("sources", []):
            if "secret" in src:
                refs.add(src["secret"]["name"])
    for c in pod["containers"] + pod.get("initContainers", []):
        refs |= {r["secretRef"]["name"] for r in c.get("envFrom", []) if "secretRef" in r}
        refs |= {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                 if "secretKeyRef" in e.get("valueFrom", {})}
    return refs


def test_k8s_each_pod_gets_only_its_secrets(tls_bundle, tmp_path, monkeypatch):
    """Workers: the store credentials and the worker certificate, nothing else; the api: the
    store, its DB URL and keys, the client certificate; the scheduler: its certificate. The
    NTK_TLS_* of every container name files of the mounted TLS Secret (as `ntk certs
    --k8s-secrets` writes it), which `workers.cluster` accepts."""
    expected = {"scheduler": {"ntk-tls-scheduler"},
                "worker": {"ntk-store", "ntk-tls-worker"},
                "worker-gpu": {"ntk-store", "ntk-tls-worker"},
                "api": {"ntk-store", "ntk-api", "ntk-tls-client"}}
    config = next(d for _, d in k8s_docs() if d["kind"] == "ConfigMap")["data"]
    secrets = {d["metadata"]["name"]: d for _, d in k8s_docs() if d["kind"] == "Secret"}
    assert set(secrets["ntk-store"]["stringData"]) == {"NTK_STORAGE_OPTIONS"}
    assert set(secrets["ntk-api"]["stringData"]) == {"NTK_DB_URL", "NTK_API_KEYS"}
    assert not {"NTK_STORAGE_OPTIONS", "NTK_DB_URL", "NTK_API_KEYS"} & set(config)
    assert not any(n.startswith("ntk-tls-") for n in secrets), "private keys are not committed"
    for role, (pod, _) in _pods().items():
        assert _secret_refs(pod) == expected[role], (role, _secret_refs(pod))
        tls_secret = next(s for s in expected[role] if s.startswith("ntk-tls-"))
        generated = tls_bundle["secrets"][tls_secret]
        assert generated["metadata"]["namespace"] == "ntk"
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in pod["containers"]:
            env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
            assert set(TLS_VARS) <= set(env), (role, c["name"])
            local = {}
            for var in TLS_VARS:
                mount = next(m for m in c["volumeMounts"]
                             if env[var].startswith(m["mountPath"].rstrip("/") + "/"))
                vol = volumes[mount["name"]]
                assert vol.get("secret", {}).get("secretName") == tls_secret, (role, var)
                assert mount.get("readOnly") is True
                assert vol["secret"]["defaultMode"] == 0o400
                key = env[var][len(mount["mountPath"].rstrip("/")) + 1:]
                assert key in generated["stringData"], (role, key)
                dst = tmp_path / role / c["name"] / key
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_text(generated["stringData"][key])
                local[var] = str(dst)
            if role != "scheduler":
                local["NTK_SCHEDULER_ADDRESS"] = config["NTK_SCHEDULER_ADDRESS"]
            check_tls_files(local, COMPOSE_ROLES[role], monkeypatch)


def _selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, f"unsupported selector {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _admits(policies: list[dict], dst: dict, src: dict | None, port: int) -> bool:
    """Whether NetworkPolicy admits a connection to pod labels `dst` on `port` from pod
    labels `src` in the same namespace (None: a pod of another namespace)."""
    mine = [p for p in policies if _selects(p["spec"]["podSelector"], dst)
            and "Ingress" in p["spec"]["policyTypes"]]
    if not mine:
        return True  # not isolated
    for p in mine:
        for rule in p["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports is not None and not any(q["port"] == port and q["protocol"] == "TCP"
                                             for q in ports):
                continue
            peers = rule.get("from")
            if peers is None:
                return True
            for peer in peers:
                assert set(peer) <= {"podSelector", "namespaceSelector"}, peer
                if "namespaceSelector" in peer:
                    assert peer["namespaceSelector"] == {} and "podSelector" not in peer
                    return True  # any pod of any namespace
                if src is not None and _selects(peer["podSelector"], src):
                    return True
    return False


def test_k8s_network_policy_fences_the_cluster():
    policies = [d for _, d in k8s_docs() if d["kind"] == "NetworkPolicy"]
    pods = {role: labels for role, (_, labels) in _pods().items()}
    other = {"app": "something-else"}  # any other pod of the namespace
    # a default deny: a pod nothing else selects gets no ingress at all
    assert not _admits(policies, other, pods["api"], 80)
    assert any(_selects(p["spec"]["podSelector"], pods["scheduler"])
               and p["spec"]["podSelector"] for p in policies), "no policy for the scheduler"
    # the scheduler's comm port: workers (CPU and GPU) and the api only
    for src in ("worker", "worker-gpu", "api"):
        assert _admits(policies, pods["scheduler"], pods[src], 8786), src
    for src in (other, None):
        assert not _admits(policies, pods["scheduler"], src, 8786), src
    # every rule that opens a scheduler port opens only 8786, to worker and api selectors
    for p in policies:
        if _selects(p["spec"]["podSelector"], pods["scheduler"]):
            for rule in p["spec"].get("ingress", []):
                assert [q["port"] for q in rule["ports"]] == [8786], rule
                for peer in rule["from"]:
                    sel = peer["podSelector"]["matchLabels"]
                    assert sel.items() <= pods["worker"].items() \
                        or sel.items() <= pods["api"].items(), sel
    # the dashboard: no pod (the kubelet's probes come from the node, always admitted)
    for src in (*pods.values(), other, None):
        assert not _admits(policies, pods["scheduler"], src, 8787), src
    # workers: any port (dynamic) from the scheduler, other workers and the api only
    for dst in ("worker", "worker-gpu"):
        for src in ("scheduler", "worker", "worker-gpu", "api"):
            assert _admits(policies, pods[dst], pods[src], 40000), (dst, src)
        for src in (other, None):
            assert not _admits(policies, pods[dst], src, 40000), (dst, src)
    # the api: its HTTP port from anywhere in the cluster, nothing else
    for src in (*pods.values(), other, None):
        assert _admits(policies, pods["api"], src, 8000), src
        assert not _admits(policies, pods["api"], src, 8786), src
    api_c = _pods()["api"][0]["containers"][0]
    assert {p["containerPort"] for p in api_c["ports"]} == {8000}


def test_k8s_pods_run_restricted():
    """The Pod Security "restricted" profile and more: non-root as the images' user, no
    privilege escalation, no capabilities, RuntimeDefault seccomp, a read-only root filesystem
    with emptyDirs where the processes write, no service account token."""
    for role, (pod, _) in _pods().items():
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == UID, role
        assert psc["runAsGroup"] == UID and psc["fsGroup"] == UID, role
        assert pod["automountServiceAccountToken"] is False, role
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod), role
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert all(set(v) - {"name"} <= {"emptyDir", "secret"} for v in volumes.values())
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            seccomp = sc.get("seccompProfile") or psc.get("seccompProfile")
            assert seccomp == {"type": "RuntimeDefault"}, (role, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (role, c["name"])
            assert sc["capabilities"] == {"drop": ["ALL"]}, (role, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (role, c["name"])
            assert sc.get("runAsNonRoot", True) is True and not sc.get("privileged")
            assert sc.get("runAsUser", UID) == UID
            writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
            for m in c["volumeMounts"]:
                if not m.get("readOnly"):
                    assert "emptyDir" in volumes[m["name"]], (role, m)
            assert "/tmp" in writable, (role, c["name"])  # tempfile, Dask's scratch/spill
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            if "NTK_STAGING_DIR" in env:
                assert env["NTK_STAGING_DIR"] in writable, role
    # the images run as that user, by number (so the kubelet can verify runAsNonRoot)
    for f in ("Dockerfile", "Dockerfile.gpu"):
        text = (ROOT / "deploy" / f).read_text()
        users = re.findall(r"^USER (\S+)$", text, re.M)
        assert users == [f"{UID}:{UID}"], (f, users)
        assert f"--uid {UID} --gid {UID}" in text and f"groupadd --gid {UID}" in text, f
    gpu = (ROOT / "deploy" / "Dockerfile.gpu").read_text()
    assert re.search(r"CUPY_CACHE_DIR=/tmp/", gpu), "CuPy's cache must be under /tmp"
