"""Helpers for the Ray tests: tiny study configs, a 2-node loopback cluster, a killable driver.

Also runnable as a script (the driver the resume test starts and SIGKILLs)::

    python tests/ray_helpers.py resume-driver --results DIR --address HOST:PORT [--resume]
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

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
    return env


def ray_stop() -> None:
    """``ray stop --force``: ends every Ray process on this machine (bounded in time)."""
    with contextlib.suppress(Exception):
        subprocess.run([RAY, "stop", "--force"], env=ray_env(), capture_output=True, timeout=120)


def _node_ports() -> list[str]:
    return ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]


@contextlib.contextmanager
def two_node_cluster(cpus_per_node: int = 1, memory_gb: float = 4.0, object_store_mb: int = 300
                     ) -> Iterator[str]:
    """A head and a worker node on loopback; yields the address. ``ray stop --force`` on exit,
    also on failure."""
    port = free_port()
    mem, obj = str(int(memory_gb * (1 << 30))), str(object_store_mb << 20)
    common = ["--num-cpus", str(cpus_per_node), "--num-gpus", "0", "--memory", mem, "--object-store-memory", obj,
              "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    head = [RAY, "start", "--head", "--port", str(port), "--include-dashboard", "true", "--dashboard-host",
            "127.0.0.1", "--dashboard-port", str(free_port()), "--ray-client-server-port", str(free_port()),
            *common, *_node_ports()]
    worker = [RAY, "start", "--address", f"127.0.0.1:{port}", *common, *_node_ports()]
    try:
        for cmd in (head, worker):
            out = subprocess.run(cmd, env=ray_env(), capture_output=True, text=True, timeout=180)
            if out.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        address = f"127.0.0.1:{port}"
        _wait_for_nodes(address, 2, timeout_s=90)
        yield address
    finally:
        ray_stop()


def _wait_for_nodes(address: str, n: int, timeout_s: float, env: dict[str, str] | None = None) -> None:
    code = ("import ray,sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
            "print(sum(1 for x in ray.nodes() if x['Alive'])); ray.shutdown()")
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-c", code, address], env=env or ray_env(), capture_output=True,
                             text=True, timeout=120)
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
            return
        last = (out.stdout.strip().splitlines() or [""])[-1] if out.returncode == 0 else out.stderr.strip()[-600:]
        time.sleep(2)
    raise TimeoutError(f"{n} Ray nodes did not come up at {address} within {timeout_s} s (last answer: {last})")


__all__ = ["tiny_base", "search_spec", "two_node_cluster", "ray_stop", "TINY_TEACHER", "REPO", "shutil"]
