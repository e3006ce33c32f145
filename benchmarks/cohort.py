"""Cohort benchmark in steady state: per-student images/s of K-student cohorts vs separate runs.

Trains HWD students (beta varied, as in the beta ablation) from one teacher with the trainer's own
``fit`` / ``fit_cohort``, in these modes:

- ``separate``: ``--separate`` separate runs (each with its own data stream and live teacher forward);
- ``cohort``: one cohort of K students per K in ``--k`` (one data stream, one teacher forward per step);
- ``separate_cached`` / ``cohort_cached``: the same with the teacher-logits cache (finite augmentation:
  fixed scale, flip only; the cache is built once, by the first cached run, inside its start-up).

Each run trains ``--warmup`` + ``--iterations`` iterations and is timed from the trainer's own log
records (``run.log_every`` = ``--warmup``): ``start`` = from the call to the end of the warm-up
iterations (model building, dataset, teacher load, cache build, the first, slow iterations),
``steady`` = the ``--iterations`` after the warm-up, ``end`` = the final evaluation and the result.
``startup_est`` = ``start`` less the warm-up iterations at the steady rate (the set-up alone).

Per mode it prints the steady step time (for a cohort: one step of all its members), the per-student
images/s (batch / step time: how fast each member advances) and the aggregate images/s (students x
that), also per second of this process's CPU time (on a machine shared with other work, what a step
costs rather than what it was given; meaningful on the CPU with ``--threads 1``); per cohort, its
steady speedup over separate runs (aggregate / a separate run's images/s: the cost of K students
trained separately over their cost as one cohort), the same in CPU time, and end to end. The
members' final losses are compared with the separate runs' (member j of every cohort has the beta of
separate run j). The last line is one JSON object.

    python benchmarks/cohort.py                                   # CPU: tiny models, 128 px, K = 2, 4, 8
    python benchmarks/cohort.py --device cuda --size 512 --classes 150 --batch 16 \\
        --teacher deeplabv3_r101 --student deeplabv3_r18 --k 2,4,8 --warmup 5 --iterations 20
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from segdistill.cohort import fit_cohort
from segdistill.config import TrainConfig
from segdistill.models import build_model
from segdistill.train import fit, save_model_artifact

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    """A callback: the wall and process CPU time of each of a run's log records (``iteration -> s``)."""

    def __init__(self) -> None:
        self.at: dict[int, float] = {}
        self.cpu: dict[int, float] = {}

    def on_log(self, record: dict[str, float]) -> None:
        self.at[int(record["iteration"])] = time.perf_counter()
        self.cpu[int(record["iteration"])] = time.process_time()


def timed(cfgs: list[TrainConfig], cohort: bool, warm: int, total: int) -> dict[str, Any]:
    """Train ``cfgs`` (one cohort, or one separate run per config) and time start / steady / end."""
    runs = [cfgs] if cohort else [[c] for c in cfgs]
    parts: list[dict[str, float]] = []
    losses: list[float] = []
    for group in runs:
        clocks = [Clock() for _ in group]
        t0 = time.perf_counter()
        results = fit_cohort(group, [[c] for c in clocks]) if cohort else [fit(group[0], [clocks[0]])]
        t1 = time.perf_counter()
        # the end of a cohort step is the last member's log record of that iteration
        t_warm = max(c.at[warm] for c in clocks)
        t_last = max(c.at[total] for c in clocks)
        steady = t_last - t_warm
        step = steady / (total - warm)
        cpu_step = (max(c.cpu[total] for c in clocks) - max(c.cpu[warm] for c in clocks)) / (total - warm)
        parts.append({"start_s": t_warm - t0, "steady_s": steady, "end_s": t1 - t_last, "total_s": t1 - t0,
                      "step_s": step, "cpu_step_s": cpu_step, "startup_est_s": max(0.0, t_warm - t0 - warm * step)})
        losses += [r.curves[-1].get("loss/total", math.nan) for r in results if r.curves]
    n = len(parts)
    out: dict[str, Any] = {k: sum(p[k] for p in parts) / n for k in parts[0]}  # per run (separate: the mean)
    out["runs"] = n
    out["wall_s"] = sum(p["total_s"] for p in parts)
    out["students"] = len(cfgs)
    out["final_losses"] = losses
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--k", default="2,4,8", help="comma list of cohort sizes")
    ap.add_argument("--separate", type=int, default=2, help="separate runs to time (students 0..N-1)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--classes", type=int, default=24)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=5, help="untimed iterations at the start of every run")
    ap.add_argument("--iterations", type=int, default=20, help="timed iterations after the warm-up "
                    "(rounded up to a multiple of --warmup: the log records that time them)")
    ap.add_argument("--train-images", type=int, default=160)
    ap.add_argument("--teacher", default="deeplabv3_tiny_r101")
    ap.add_argument("--student", default="deeplabv3_tiny_r18")
    ap.add_argument("--threads", type=int, default=0, help="run.threads (0 = torch's default)")
    ap.add_argument("--modes", default="separate,cohort,separate_cached,cohort_cached",
                    help="comma list; a mode may repeat with a digit suffix (separate2: the run-to-run noise floor)")
    ap.add_argument("--deterministic", action="store_true", help="run.deterministic=true (GPU: no cuDNN autotuning)")
    a = ap.parse_args()
    ks = sorted({int(k) for k in a.k.split(",")})
    warm = max(1, a.warmup)
    timed_its = warm * math.ceil(max(1, a.iterations) / warm)
    total = warm + timed_its
    tmp = Path(tempfile.mkdtemp(prefix="cohort_bench_"))
    base = TrainConfig().replace(**{
        "data.num_classes": a.classes, "data.image_size": a.size, "data.crop_size": a.size,
        "data.scale_min": 1.0, "data.scale_max": 1.0, "data.train_images": a.train_images, "data.val_images": 8,
        "optim.batch_size": a.batch, "optim.iterations": total, "run.eval_every": 0, "run.log_every": warm,
        "run.device": a.device, "run.progress": False, "run.deterministic": a.deterministic,
        "run.threads": a.threads, "model.arch": a.teacher, "run.out_dir": str(tmp / "t"),
    })
    if a.threads:
        torch.set_num_threads(a.threads)
    # An untrained teacher is as expensive to run as a trained one; speed is what is measured here.
    teacher_file = save_model_artifact(build_model(a.teacher, a.classes), base, tmp / "teacher.pt")
    n_students = max(max(ks), a.separate)
    betas = [round(0.1 + 0.8 * i / max(1, n_students - 1), 3) for i in range(n_students)]  # the same for every K

    def cfgs(mode: str, n: int, name: str) -> list[TrainConfig]:
        cached = mode.rstrip("0123456789").endswith("cached")  # separate_cached2: a repeat of separate_cached
        cache = {"run.teacher_cache": str(tmp / "cache")} if cached else {}
        return [base.replace(**{"model.arch": a.student, "distill.method": "hwd", "distill.beta": b,
                                "distill.teacher_arch": a.teacher, "distill.teacher_checkpoint": str(teacher_file),
                                "run.out_dir": str(tmp / name / f"m{i}"), **cache}) for i, b in enumerate(betas[:n])]

    device = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    res: dict[str, Any] = {"device": device, "torch": torch.__version__, "ks": ks, "warmup": warm,
                           "iterations": timed_its, "batch": a.batch, "size": a.size, "teacher": a.teacher,
                           "student": a.student, "threads": a.threads or torch.get_num_threads(),
                           "cpus": os.cpu_count(), "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    # Warm-up (untimed): one short run pays the process's one-time costs (kernel selection, the
    # synthetic scenes' first rendering) so that the first timed mode is not charged for them.
    fit(cfgs("warmup", 1, "warmup")[0].replace(**{"optim.iterations": 1, "run.log_every": 1}))
    modes: dict[str, dict[str, Any]] = {}
    print(f"{'mode':<20} {'students':>8} {'step s':>8} {'img/s/student':>14} {'img/s all':>10} {'img/CPU-s all':>13} "
          f"{'start s':>8} {'set-up s':>8} {'end s':>6} {'wall s':>7}", flush=True)
    for mode in a.modes.split(","):
        if mode.startswith("cohort"):
            jobs = [(f"{mode}_k{k}", k, True) for k in ks]
        else:
            jobs = [(mode, a.separate, False)]
        for name, n, cohort in jobs:
            m = timed(cfgs(mode, n, name), cohort, warm, total)
            per_student = a.batch / m["step_s"]
            m["per_student_img_per_s"] = per_student
            m["aggregate_img_per_s"] = per_student * (n if cohort else 1)
            # the same from this process's CPU time: on a busy machine, what the step costs, not what it got
            m["per_student_img_per_cpu_s"] = a.batch / m["cpu_step_s"] if m["cpu_step_s"] > 0 else math.nan
            m["aggregate_img_per_cpu_s"] = m["per_student_img_per_cpu_s"] * (n if cohort else 1)
            m["teacher_cache"] = all(c.run.teacher_cache for c in cfgs(mode, n, name))
            modes[name] = m
            res[f"{name}_s"] = m["wall_s"]
            print(f"{name:<20} {n:>8} {m['step_s']:8.3f} {per_student:14.1f} {m['aggregate_img_per_s']:10.1f} "
                  f"{m['aggregate_img_per_cpu_s']:13.1f} {m['start_s']:8.1f} {m['startup_est_s']:8.1f} {m['end_s']:6.1f} {m['wall_s']:7.1f}; final losses "
                  + " ".join(f"{x:.4f}" for x in m["final_losses"]), flush=True)
    res["modes"] = modes
    # speedups: a cohort of K against K separate runs of the same kind (and cached cohort vs live separate)
    for name, m in modes.items():
        if not name.startswith("cohort"):
            continue
        k = m["students"]
        kind = name.rsplit("_k", 1)[0]
        for ref in {kind.replace("cohort", "separate"), "separate"}:
            if ref in modes:
                r = modes[ref]
                res[f"steady_speedup_{name}_over_{ref}"] = m["aggregate_img_per_s"] / r["per_student_img_per_s"]
                res[f"end_to_end_speedup_{name}_over_{ref}"] = k * r["total_s"] / m["total_s"]
                res[f"cpu_time_speedup_{name}_over_{ref}"] = m["aggregate_img_per_cpu_s"] / r["per_student_img_per_cpu_s"]
    if "separate" in modes:
        ref = modes["separate"]["final_losses"]
        for name, m in modes.items():
            if name != "separate":  # per mode: a repeated separate run gives the noise floor to compare with
                res[f"final_loss_diff_{name}_vs_separate"] = max(
                    (abs(x - y) for x, y in zip(m["final_losses"], ref)), default=0.0)
        res["max_final_loss_diff_vs_separate"] = max(
            (v for k, v in res.items() if k.startswith("final_loss_diff_")), default=0.0)
    for key, v in sorted(res.items()):
        if key.startswith("steady_speedup"):
            print(f"{key}: {v:.2f}x steady, {res[key.replace('steady_', 'cpu_time_')]:.2f}x in CPU time, "
                  f"{res[key.replace('steady_', 'end_to_end_')]:.2f}x end to end")
    res["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(res))


if __name__ == "__main__":
    main()
