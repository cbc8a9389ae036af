"""deploy/: docker-compose.yml through `docker compose config`, the Kubernetes manifests through
kubernetes-validate --strict and the Dask operator's CRD schemas, and every env var, port and
command they name checked against what the code reads and accepts."""

from __future__ import annotations

import ast
import json
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
from packaging.requirements import Requirement

from service.config import ENV
from workers.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
K8S = ROOT / "deploy" / "k8s"
OUR_IMAGES = ("ntkcompute:", "ntkcompute-gpu:")


def env_vars_the_code_reads() -> set[str]:
    """Every literal name passed to os.environ.get / os.environ[...] / os.getenv in the
    packages, plus the service's Settings table (service.config.ENV)."""
    names = set(ENV.values())
    for pkg in ("ntkcompute", "workers", "service"):
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
    """The container command parses with the real `ntk` parser."""
    assert cmd[0] == "ntk", cmd
    args = [a.replace("$(DASK_WORKER_NAME)", "w-1") for a in cmd[1:]]
    build_parser().parse_args(args)


def test_the_code_reads_the_names_we_deploy_with():
    assert {"NTK_STORE", "NTK_DB_URL", "NTK_SCHEDULER_ADDRESS", "NTK_STORAGE_OPTIONS",
            "NTK_API_KEYS", "NTKCOMPUTE_DEVICE"} <= CODE_ENV


# docker-compose -----------------------------------------------------------------------------
def compose_config(*profiles: str) -> dict:
    args = [str(BIN / "docker-compose"), "-f", str(ROOT / "docker-compose.yml")]
    for p in profiles:
        args += ["--profile", p]
    out = subprocess.run([*args, "config", "--format", "json"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
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
    # ports: the scheduler listens where NTK_SCHEDULER_ADDRESS points, the api where published
    addr = svc["api"]["environment"]["NTK_SCHEDULER_ADDRESS"]
    host, port = addr.removeprefix("tcp://").split(":")
    assert host == "scheduler" and port in svc["scheduler"]["command"]
    assert {p["target"] for p in svc["scheduler"]["ports"]} == {8786, 8787}
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
    # health checks on every long-running service
    for name in ("postgres", "minio", "scheduler", "api"):
        assert svc[name]["healthcheck"]["test"], name


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


# Kubernetes ---------------------------------------------------------------------------------------
def k8s_docs() -> list[tuple[str, dict]]:
    out = []
    for f in sorted(K8S.glob("*.yaml")):
        if f.name != "kustomization.yaml":
            out += [(f.name, d) for d in yaml.safe_load_all(f.read_text()) if d]
    return out


def test_builtin_manifests_pass_kubernetes_validate_strict():
    files = [str(f) for f in sorted(K8S.glob("*.yaml")) if f.name != "kustomization.yaml"]
    out = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", *files],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    passed = out.stdout + out.stderr
    for kind in ("configmap/ntk-config", "secret/ntk-secrets", "deployment/ntk-api",
                 "service/ntk-api"):
        assert f"passed for resource {kind}" in passed
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
    secret = next(d for _, d in docs if d["kind"] == "Secret")
    for var in [*config["data"], *secret["stringData"]]:
        assert var in CODE_ENV, var
    for _, d in docs:
        for c in _containers(d):
            assert c["image"].startswith(OUR_IMAGES)
            check_command(c["args"])
            for e in c.get("env", []):
                assert not ours(e["name"]) or e["name"] in CODE_ENV, e
            if c["name"] != "scheduler":  # api and workers read the shared configuration
                refs = {r.get("configMapRef", r.get("secretRef"))["name"]
                        for r in c["envFrom"]}
                assert refs == {"ntk-config", "ntk-secrets"}
    # the scheduler address names the operator's scheduler Service and its comm port
    cluster = next(d for _, d in docs if d["kind"] == "DaskCluster")
    addr = config["data"]["NTK_SCHEDULER_ADDRESS"]
    assert addr == f"tcp://{cluster['metadata']['name']}-scheduler:8786"
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
    lines = [ln.strip() for ln in section.splitlines() if ln.strip().startswith("ntk ")]
    assert lines
    for ln in lines:
        check_command(shlex.split(ln.split("#")[0]))
