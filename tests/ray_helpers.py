"""Helpers for the Ray tests: tiny study configs, a 2-node loopback cluster, a killable driver.

Also runnable as a script (the driver the resume test starts and SIGKILLs)::

    python tests/ray_helpers.py resume-driver --results DIR --address HOST:PORT [--resume]
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))

from segdistill.config import TrainConfig  # noqa: E402
from segdistill.study import Resources, StudySpec, TeacherRecipe  # noqa: E402

RAY = str(Path(sys.executable).with_name("ray"))


def tiny_base(iterations: int = 10, eval_every: int = 5) -> TrainConfig:
    """Seconds per trial on one CPU core: 48x48 synthetic images, 6 classes, tiny R18."""
    return TrainConfig().replace(**{
        "data.image_size": 48, "data.crop_size": 48, "data.num_classes": 6,
        "data.train_images": 8, "data.val_images": 2,
        "model.arch": "deeplabv3_tiny_r18",
        "optim.iterations": iterations, "optim.batch_size": 2,
        "run.eval_every": eval_every, "run.log_every": eval_every, "run.device": "cpu", "run.threads": 1,
        "run.amp": False, "run.channels_last": False, "run.progress": False,
    })


TINY_TEACHER = TeacherRecipe("deeplabv3_tiny_r18", {"optim.iterations": 4, "run.eval_every": 4})


def hwd_space(trial) -> dict:
    """A define-by-run space with a conditional parameter (module level: it must pickle)."""
    trial.suggest_float("distill.mu", -1.0, 1.0)
    trial.suggest_float("distill.alpha", 0.1, 10.0, log=True)  # spreads results early, so ASHA stops some
    if trial.suggest_categorical("distill.weighting", ["smooth", "softmax"]) == "smooth":
        trial.suggest_float("distill.beta", 0.05, 0.9, log=True)
    else:
        trial.suggest_float("distill.tau_prime", 1.0, 8.0)
    return {"distill.method": "hwd"}


def search_spec(name: str, *, samples: int, shape: str, scheduler: str, iterations: int = 10,
                eval_every: int = 5, max_concurrent: int = 0, grace: int = 0, reduction: int = 2) -> StudySpec:
    return StudySpec(name=name, base=tiny_base(iterations, eval_every), variants=({"distill.method": "hwd"},),
                     search="optuna", space=hwd_space, num_samples=samples, search_seed=0, scheduler=scheduler,
                     asha_grace=grace or eval_every, asha_reduction=reduction, shape=shape, resources=Resources(cpus=1),
                     teacher=TINY_TEACHER, max_concurrent=max_concurrent, tags={"preset": "test"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "platform"), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("RAY_ADDRESS", None)
    # Ray's token authentication, when RAY_AUTH_MODE is unset, follows whether ~/.ray/auth_token
    # exists, and a `ray start` node and a client of it can read that differently (a node that found
    # the file refuses the client that did not: seen as "Failed to connect to Ray cluster"). Test nodes
    # and their clients therefore always get one explicit mode: the caller's, else disabled.
    env.setdefault("RAY_AUTH_MODE", "disabled")
    return env


def private_temp_dir(prefix: str = "sdray") -> Path:
    """A fresh, short Ray temp dir (Ray's socket paths must stay under ~107 characters). A cluster
    started with ``--temp-dir`` there writes its ``ray_current_cluster`` there, not in /tmp/ray, so
    no other driver on this machine (a user's study, another test run) mistakes it for its own."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return any(_pgid(p) == pgid and p.status() != psutil.STATUS_ZOMBIE for p in psutil.process_iter())


def _pgid(proc: psutil.Process) -> int:
    try:
        return os.getpgid(proc.pid)
    except OSError:
        return -1


def stop_group(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """End the process group that ``proc`` leads (started with ``start_new_session=True``): SIGTERM,
    then SIGKILL for whatever is left after ``grace_s``. Only processes this test started are in that
    group (a Ray node's GCS, raylet, dashboard, workers...); every other Ray on the machine is spared."""
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _group_alive(pgid):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    deadline = time.monotonic() + 30  # SIGKILL is not refused; wait until the kernel has reaped them
    while time.monotonic() < deadline and _group_alive(pgid):
        time.sleep(0.2)


def run_in_own_group(cmd: list[str], *, timeout: float, grace_s: float = 15.0, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True)`` in a new process group that is ended
    afterwards (also on timeout): Ray processes a script started and did not shut down die with it."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc, grace_s)
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(cmd, timeout, output=out, stderr=err) from None
    finally:
        stop_group(proc, grace_s)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _node_ports() -> list[str]:
    return ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]


@contextlib.contextmanager
def two_node_cluster(cpus_per_node: int = 1, memory_gb: float = 4.0, object_store_mb: int = 300
                     ) -> Iterator[str]:
    """A head and a worker node on loopback in a private temp dir; yields the address. Each node is a
    ``ray start --block`` in its own process group, ended on exit (also on failure): only this
    cluster's processes are stopped."""
    port = free_port()
    temp = private_temp_dir()
    mem, obj = str(int(memory_gb * (1 << 30))), str(object_store_mb << 20)
    common = ["--num-cpus", str(cpus_per_node), "--num-gpus", "0", "--memory", mem, "--object-store-memory", obj,
              "--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--block"]
    head = [RAY, "start", "--head", "--port", str(port), "--temp-dir", str(temp), "--include-dashboard", "true",
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(free_port()), "--ray-client-server-port",
            str(free_port()), *common, *_node_ports()]
    worker = [RAY, "start", "--address", f"127.0.0.1:{port}", *common, *_node_ports()]
    address = f"127.0.0.1:{port}"
    nodes: list[subprocess.Popen] = []
    try:
        for n, cmd in enumerate((head, worker), start=1):
            log = (temp / f"node{n}.log").open("w")
            nodes.append(subprocess.Popen(cmd, env=ray_env(), stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
            try:
                _wait_for_nodes(address, n, timeout_s=120, procs=nodes)
            except (TimeoutError, RuntimeError) as exc:
                logs = "\n".join(f"== {p.name}\n{p.read_text()[-2000:]}" for p in sorted(temp.glob("node*.log")))
                raise RuntimeError(f"{' '.join(cmd)}: {exc}\n{logs}") from None
        yield address
    finally:
        for node in reversed(nodes):
            stop_group(node)
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_nodes(address: str, n: int, timeout_s: float, env: dict[str, str] | None = None,
                    procs: list[subprocess.Popen] | None = None) -> None:
    code = ("import ray,sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
            "print(sum(1 for x in ray.nodes() if x['Alive'])); ray.shutdown()")
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        dead = [p.args for p in procs or () if p.poll() is not None]
        if dead:
            raise RuntimeError(f"a Ray node exited while starting: {dead[0][:4]}")
        out = subprocess.run([sys.executable, "-c", code, address], env=env or ray_env(), capture_output=True,
                             text=True, timeout=120)
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
            return
        last = (out.stdout.strip().splitlines() or [""])[-1] if out.returncode == 0 else out.stderr.strip()[-600:]
        time.sleep(2)
    raise TimeoutError(f"{n} Ray nodes did not come up at {address} within {timeout_s} s (last answer: {last})")


__all__ = ["tiny_base", "search_spec", "two_node_cluster", "stop_group", "run_in_own_group", "private_temp_dir",
           "start_neighbour_head", "NeighbourHead",
           "TINY_TEACHER", "REPO", "shutil"]


@dataclasses.dataclass
class NeighbourHead:
    proc: subprocess.Popen
    address: str
    pids: list[int]


def start_neighbour_head(timeout_s: float = 120) -> NeighbourHead:
    """A one-CPU ``ray start --head`` in Ray's default temp dir (where a user's own cluster lives,
    so ``ray.init()`` without an address would find it), in its own process group."""
    port = free_port()
    cmd = [RAY, "start", "--head", "--port", str(port), "--num-cpus", "1", "--num-gpus", "0",
           "--node-ip-address", "127.0.0.1", "--include-dashboard", "false", "--disable-usage-stats",
           "--ray-client-server-port", str(free_port()), "--block", *_node_ports()]
    proc = subprocess.Popen(cmd, env=ray_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        _wait_for_nodes(address, 1, timeout_s=timeout_s, procs=[proc])
    except BaseException:
        stop_group(proc)
        raise
    # its long-lived processes (GCS, raylet, agents, monitors), not the short-lived worker processes
    # the raylet starts for a driver and ends when idle
    pids = [p.pid for p in psutil.process_iter(["name", "cmdline"]) if _pgid(p) == proc.pid
            and "default_worker.py" not in " ".join(p.info["cmdline"] or []) and not (p.info["name"] or "").startswith("ray::IDLE")]
    return NeighbourHead(proc, address, pids)
