"""Time per training iteration of every distillation method relative to the CE-only baseline student.

The step is the trainer's (``segdistill.train.distillation_losses`` + SGD step + the method's
``after_step``, e.g. the SKD/IFVD critic update), on the demo preset's shapes by default: 128x128
crops, batch 8, 24 classes, a tiny R101 teacher and a tiny student, one thread per process.
Methods are timed in interleaved rounds and the median is reported, so a shared, noisy CPU biases
every method alike.

    PYTHONPATH=platform python benchmarks/methods_step.py [--student deeplabv3_tiny_r18] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from segdistill.config import DistillConfig, known_methods
from segdistill.losses import build_distiller, reference_alpha
from segdistill.models import build_model
from segdistill.train import distillation_losses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", default="deeplabv3_tiny_r18")
    p.add_argument("--teacher", default="deeplabv3_tiny_r101")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--classes", type=int, default=24)
    p.add_argument("--steps", type=int, default=3, help="timed steps per method per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--methods", default=",".join(known_methods()))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    teacher = build_model(a.teacher, a.classes).eval().requires_grad_(False)
    x = torch.randn(a.batch, 3, a.size, a.size)
    y = torch.randint(0, a.classes, (a.batch, a.size, a.size))
    runs = {}
    for m in a.methods.split(","):
        student = build_model(a.student, a.classes)
        cfg = DistillConfig(method=m, teacher_arch=a.teacher, teacher_checkpoint="-") if m != "none" else DistillConfig()
        distiller = build_distiller(cfg, student=student)
        params = list(student.parameters()) + (distiller.student_parameters() if distiller is not None else [])
        opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
        runs[m] = (student, distiller, opt, reference_alpha(m) if m != "none" else 0.0)

    def step(m: str) -> None:
        student, distiller, opt, alpha = runs[m]
        terms = distillation_losses(student, teacher if distiller is not None else None, distiller, x, y,
                                    alpha=alpha, aux_weight=0.4)
        opt.zero_grad(set_to_none=True)
        terms["loss/total"].backward()
        opt.step()
        if distiller is not None:
            distiller.after_step(1.0)

    for m in runs:  # warm-up
        step(m)
    times: dict[str, list[float]] = {m: [] for m in runs}
    for _ in range(a.rounds):
        for m in runs:
            t0 = time.perf_counter()
            for _ in range(a.steps):
                step(m)
            times[m].append((time.perf_counter() - t0) / a.steps)
    base = statistics.median(times["none"]) if "none" in times else float("nan")
    print(f"student {a.student}, teacher {a.teacher}, {a.size}x{a.size}, batch {a.batch}, {a.classes} classes, "
          f"{a.threads} thread(s), median of {a.rounds} rounds x {a.steps} steps")
    print(f"{'method':8s} {'s/iter':>8s} {'x baseline':>10s} {'min..max s/iter':>18s}")
    for m, ts in times.items():
        med = statistics.median(ts)
        print(f"{m:8s} {med:8.3f} {med / base:10.2f} {min(ts):8.3f}..{max(ts):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
