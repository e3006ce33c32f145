"""Helpers for tests/test_faults.py: a killable study driver and processes that die mid-write.

Runnable as a script (the test starts it in a subprocess and kills it)::

    python tests/fault_helpers.py driver --results DIR --address HOST:PORT [--resume]
    python tests/fault_helpers.py write-parquet --results DIR --trial ID --mb N [--loop]
    python tests/fault_helpers.py fit --out DIR --iterations N [--checkpoint-every K]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# The config and the study layer are imported where they are used: the write-parquet helper, started
# about ten times per test, needs neither, and importing the config loads torch (~2 s a process).

DRIVER_STUDY = "driver_kill"
DRIVER_SAMPLES = 4
DRIVER_ITERATIONS = 600


def log_space(trial) -> dict:
    """A one-point space over a run setting (checkpoints do not compare the ``run`` section)."""
    trial.suggest_categorical("run.log_every", [1])
    return {}


def lr_space(trial) -> dict:
    """A small define-by-run space over the optimiser (no teacher needed: method 'none')."""
    trial.suggest_float("optim.lr", 0.005, 0.05, log=True)
    trial.suggest_float("optim.momentum", 0.5, 0.95)
    return {}


def driver_spec() -> StudySpec:
    from ray_helpers import tiny_base
    from segdistill.study import Resources, StudySpec

    base = tiny_base(DRIVER_ITERATIONS, 100).replace(**{"run.log_every": 20})
    return StudySpec(name=DRIVER_STUDY, base=base, search="optuna", space=lr_space, num_samples=DRIVER_SAMPLES,
                     search_seed=0, resources=Resources(cpus=1), max_concurrent=2, tags={"preset": "faults"})


def fit_config(out: str, iterations: int, checkpoint_every: int):
    from ray_helpers import tiny_base

    return tiny_base(iterations, checkpoint_every).replace(**{
        "run.out_dir": out, "run.log_every": 1, "run.checkpoint_every": checkpoint_every})


class _DieAfter:
    """fit callback: once the checkpoint of iteration ``k`` is complete, set RLIMIT_FSIZE to half
    its size, so the kernel kills this process (SIGXFSZ) in the middle of the next checkpoint write."""

    def __init__(self, out: str, k: int, kill_after: int = 0) -> None:
        self.out, self.k, self.kill_after = Path(out), k, kill_after

    def on_eval(self, event) -> None:
        if self.kill_after and event.iteration == self.kill_after and event.checkpoint_dir:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)  # dies after the checkpoint, before anyone hears of it
        if self.k and event.iteration == self.k and event.checkpoint_dir:
            import resource

            limit = (Path(event.checkpoint_dir) / "state.pt").stat().st_size // 2
            (self.out / "fsize_limit").write_text(str(limit))
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def big_record(trial_id: str, mb: int, version: int):
    """A trial record whose ``samples`` part is about ``mb`` MiB (incompressible bytes), so
    writing it takes long enough to be interrupted; ``version`` goes into a metric."""
    import numpy as np

    from segdistill.results import TrialRecord

    side = max(8, int((mb * (1 << 20) / 3) ** 0.5))
    rng = np.random.default_rng(version)
    image = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
    label = rng.integers(0, 6, (side, side)).astype(np.int16)
    return TrialRecord(study="w", trial_id=trial_id, config={"distill.beta": 0.1},
                       metrics={"best_miou": 0.5, "version": version},
                       per_class=[{"class_id": 0, "class_name": "a", "iou": 0.5}],
                       curves=[{"iteration": i, "loss/total": 1.0 / i} for i in range(1, 50)],
                       samples=[{"image": image, "label": label, "prediction": label}])


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["driver", "write-parquet", "fit"])
    p.add_argument("--results")
    p.add_argument("--address", default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--trial", default="t1")
    p.add_argument("--mb", type=int, default=8)
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--loop", action="store_true")
    p.add_argument("--out")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--checkpoint-every", type=int, default=5)
    p.add_argument("--die-after", type=int, default=0,
                   help="after the checkpoint of this iteration, cap this process's file size below it")
    p.add_argument("--kill-after", type=int, default=0,
                   help="SIGKILL this process right after the checkpoint of this iteration is written")
    p.add_argument("--xfsz", choices=["kill", "error"], default="kill",
                   help="crossing RLIMIT_FSIZE kills the process mid-write (kill) or fails the write with "
                        "EFBIG like a full disk (error: Python's default, SIGXFSZ ignored)")
    args = p.parse_args(argv)
    if args.xfsz == "kill":
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    if args.command == "driver":
        from segdistill.study import run_study

        df = run_study(driver_spec(), results_root=args.results, address=args.address, resume=args.resume,
                       verbose=0)
        print("TRIALS", len(df))
    elif args.command == "write-parquet":
        from segdistill.results import write_trial

        version = args.version
        while True:  # --loop: rewrite the same trial until killed (each write is a new version)
            write_trial(args.results, big_record(args.trial, args.mb, version))
            print("WROTE", version, flush=True)
            version += 1
            if not args.loop:
                break
    else:
        from segdistill.train import fit

        fit(fit_config(args.out, args.iterations, args.checkpoint_every), [_DieAfter(args.out, args.die_after, args.kill_after)],
            resume=True)
        print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
