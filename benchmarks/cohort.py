"""Cohort and teacher-cache benchmark: K students trained as K separate runs vs one cohort.

Trains K HWD students (beta varied, as in the beta ablation) from one teacher, end to end with
``fit`` (dataset, teacher load, training, final evaluation), four ways:

- ``separate``: K separate runs, each with its own data stream and live teacher forward;
- ``cohort``: one cohort (one data stream, one teacher forward per step);
- ``separate_cached`` / ``cohort_cached``: the same with the teacher-logits cache (finite
  augmentation: fixed scale, flip only; the cache is built once, by the first run).

and checks that the members' final losses equal the separate runs'. The last line is one JSON
object with the wall times and speedups.

    python benchmarks/cohort.py                                   # CPU: tiny models, 128 px
    python benchmarks/cohort.py --device cuda --size 512 --classes 150 --batch 16 \\
        --teacher deeplabv3_r101 --student deeplabv3_r18 --iterations 30
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))

from segdistill.cohort import fit_cohort  # noqa: E402
from segdistill.config import TrainConfig  # noqa: E402
from segdistill.train import fit, save_model_artifact  # noqa: E402
from segdistill.models import build_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--classes", type=int, default=24)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--train-images", type=int, default=160)
    ap.add_argument("--teacher", default="deeplabv3_tiny_r101")
    ap.add_argument("--student", default="deeplabv3_tiny_r18")
    ap.add_argument("--modes", default="separate,cohort,separate_cached,cohort_cached",
                    help="comma list; a mode may repeat with a digit suffix (separate2: the run-to-run noise floor)")
    ap.add_argument("--deterministic", action="store_true", help="run.deterministic=true (GPU: no cuDNN autotuning)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cohort_bench_"))
    base = TrainConfig().replace(**{
        "data.num_classes": a.classes, "data.image_size": a.size, "data.crop_size": a.size,
        "data.scale_min": 1.0, "data.scale_max": 1.0, "data.train_images": a.train_images, "data.val_images": 8,
        "optim.batch_size": a.batch, "optim.iterations": a.iterations, "run.eval_every": 0,
        "run.device": a.device, "run.progress": False, "run.deterministic": a.deterministic,
        "model.arch": a.teacher, "run.out_dir": str(tmp / "t"),
    })
    # An untrained teacher is as expensive to run as a trained one; speed is what is measured here.
    teacher_file = save_model_artifact(build_model(a.teacher, a.classes), base, tmp / "teacher.pt")
    betas = [round(0.1 + 0.8 * i / max(1, a.k - 1), 3) for i in range(a.k)]

    def cfgs(mode: str) -> list[TrainConfig]:
        cached = mode.rstrip("0123456789").endswith("cached")  # separate_cached2: a repeat of separate_cached
        cache = {"run.teacher_cache": str(tmp / "cache")} if cached else {}
        return [base.replace(**{"model.arch": a.student, "distill.method": "hwd", "distill.beta": b,
                                "distill.teacher_arch": a.teacher, "distill.teacher_checkpoint": str(teacher_file),
                                "run.out_dir": str(tmp / mode / f"m{i}"), **cache}) for i, b in enumerate(betas)]

    res: dict[str, object] = {"device": a.device, "k": a.k, "iterations": a.iterations, "batch": a.batch, "size": a.size}
    # Warm-up (untimed): one short run pays the process's one-time costs (kernel selection, the
    # synthetic scenes' first rendering) so that the first timed mode is not charged for them.
    fit(cfgs("warmup")[0].replace(**{"optim.iterations": 1}))
    final_losses: dict[str, list[float]] = {}
    for mode in a.modes.split(","):
        t0 = time.perf_counter()
        results = fit_cohort(cfgs(mode)) if mode.startswith("cohort") else [fit(c) for c in cfgs(mode)]
        res[f"{mode}_s"] = time.perf_counter() - t0
        final_losses[mode] = [r.curves[-1].get("loss/total", float("nan")) for r in results if r.curves]
        print(f"{mode:<16} {res[f'{mode}_s']:8.1f} s for {a.k} students x {a.iterations} iterations; final losses "
              + " ".join(f"{x:.4f}" for x in final_losses[mode]), flush=True)
    for num, den in (("separate", "cohort"), ("separate_cached", "cohort_cached"), ("separate", "cohort_cached"),
                     ("separate", "separate_cached")):
        if f"{num}_s" in res and f"{den}_s" in res:
            res[f"speedup_{den}_over_{num}"] = res[f"{num}_s"] / res[f"{den}_s"]  # type: ignore[operator]
    if "separate" in final_losses:
        ref = final_losses["separate"]
        for m, ls in final_losses.items():
            if m != "separate":  # per mode: a repeated separate run gives the noise floor to compare with
                res[f"final_loss_diff_{m}_vs_separate"] = max((abs(x - y) for x, y in zip(ls, ref)), default=0.0)
        res["max_final_loss_diff_vs_separate"] = max(
            (abs(x - y) for m, ls in final_losses.items() for x, y in zip(ls, ref)), default=0.0)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
