"""Benchmark the project's distillation step (the exact code ``fit`` runs) on one device.

Measures images/s of one optimisation step (teacher forward + student forward/backward + SGD) for
CE-only, CWD and HWD, in the trainer's GPU setting (bf16 autocast, channels_last), optionally with
``torch.compile`` of the student or of the full-resolution CE, plus the cost of the HWD weights
alone. Compare against ``shared/bench/plain_pytorch_step.py`` run on the same GPU in the same job.

    python bench/bench_step.py --device cuda                       # paper setting: 512x512, 150 classes
    python bench/bench_step.py --device cpu --size 64 --classes 8 --batch 2 --iters 2 --warm 1 \\
        --teacher deeplabv3_tiny_r101 --student deeplabv3_tiny_r18  # smoke run on a CPU
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from segdistill.config import DistillConfig  # noqa: E402
from segdistill.losses import build_distiller, hwd_weights  # noqa: E402
from segdistill.models import build_model, count_params  # noqa: E402
from segdistill.train import distillation_losses  # noqa: E402


def timeit(fn: Callable[[], object], iters: int, warm: int, sync: Callable[[], None]) -> float:
    for _ in range(warm):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - t0) / iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--classes", type=int, default=150)
    ap.add_argument("--teacher", default="deeplabv3_r101")
    ap.add_argument("--student", default="deeplabv3_r18")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warm", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--no-aux", action="store_true", help="drop the aux head (the reference has none)")
    ap.add_argument("--variants", default="eager,compile", help="comma list of eager, compile (student), compile_ce (the trainer's GPU default), compile_both")
    a = ap.parse_args()

    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    fmt = torch.channels_last if cuda else torch.contiguous_format
    amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=cuda)

    teacher = build_model(a.teacher, a.classes).to(dev, memory_format=fmt).eval().requires_grad_(False)
    x = torch.randn(a.batch, 3, a.size, a.size, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, a.classes, (a.batch, a.size, a.size), device=dev)
    y[:, :8] = 255
    res: dict[str, object] = {
        "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__, "args": vars(a),
        "student_params": count_params(build_model(a.student, a.classes)),
    }

    from segdistill.train import segmentation_ce

    for variant in a.variants.split(","):
        student = build_model(a.student, a.classes, aux=not a.no_aux).to(dev, memory_format=fmt).train()
        opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        model = torch.compile(student) if variant == "compile" else student
        ce = torch.compile(segmentation_ce) if variant in ("compile_ce", "compile_both") else segmentation_ce
        if variant == "compile_both":
            model = torch.compile(student)
        for method in ("none", "cwd", "hwd"):
            cfg = DistillConfig(method=method, teacher_arch="t", teacher_checkpoint="t") if method != "none" else DistillConfig()
            distiller = build_distiller(cfg)
            t = teacher if distiller is not None else None

            def step() -> None:
                with torch.autocast(**amp):
                    terms = distillation_losses(model, t, distiller, x, y, alpha=3.0, aux_weight=0.4, ce=ce)
                opt.zero_grad(set_to_none=True)
                terms["loss/total"].backward()
                opt.step()

            try:
                sec = timeit(step, a.iters, a.warm, sync)
                res[f"{variant}/{method}_step_s"] = sec
                res[f"{variant}/{method}_img_per_s"] = a.batch / sec
            except Exception as exc:  # report and go on: one failing variant must not lose the others
                res[f"{variant}/{method}_error"] = f"{type(exc).__name__}: {exc}"[:500]
        if f"{variant}/hwd_step_s" in res and f"{variant}/cwd_step_s" in res:
            res[f"{variant}/hwd_vs_cwd_overhead"] = res[f"{variant}/hwd_step_s"] / res[f"{variant}/cwd_step_s"] - 1
        del model, student, opt
        if cuda:
            torch.cuda.empty_cache()

    with torch.no_grad(), torch.autocast(**amp):
        zt = teacher(x).logits.float()
    zs = zt + 0.1 * torch.randn_like(zt)
    res["hwd_weights_only_s"] = timeit(lambda: hwd_weights(zs, zt, y), a.iters, a.warm, sync)
    res["teacher_fwd_s"] = timeit(lambda: teacher(x), a.iters, a.warm, sync) if not cuda else None
    if cuda:
        def tf() -> None:
            with torch.no_grad(), torch.autocast(**amp):
                teacher(x)
        res["teacher_fwd_s"] = timeit(tf, a.iters, a.warm, sync)
        res["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
