"""Step benchmark: the project's distillation step against the plain-PyTorch reference, same process.

Times one optimisation step -- data already on the device, teacher forward (no gradient), student
forward/backward, loss, SGD step -- of

- ours: ``segdistill.train.distillation_losses`` (exactly what ``fit`` runs) with each CE path
  (``literal``, ``compiled`` = the literal path under ``torch.compile``, ``blocked`` =
  ``segdistill.upsample_ce``), with optional levers after ``+`` (several may be joined by ``+``):
  ``student`` (the student compiled), ``teacher`` (the frozen teacher compiled), ``tgraph`` (the
  teacher compiled with ``mode="reduce-overhead"``: CUDA graphs, its shapes are static), ``tbf16``
  (the teacher's weights and input in bf16, no per-step autocast casts), ``fused`` (SGD with
  ``fused=True``); e.g. ``compiled+teacher+fused``;
- the reference: ``shared/bench/plain_pytorch_step.py``'s model, CWD and HWD functions, stepped the
  way its ``main`` steps them (bf16 autocast, channels_last, no aux head);

and prints, per setup, images/s for CE-only / CWD / HWD, the ratio to the reference's HWD step, the
achieved TFLOP/s (PyTorch's FLOP counter), peak memory, HWD's overhead over CWD, and the time split
of the best setup (data / teacher / student forward+loss / backward / optimizer), and, per setup, the
HWD loss after the same steps from the same start (``hwd_loss_check``; ``max_hwd_loss_rel_diff``: a
lever must not change what is trained beyond rounding). The last line of
output is one JSON object with at least ``images_per_s``, ``reference_images_per_s``, ``ratio``,
``hwd_over_cwd`` and ``device``.

    python benchmarks/step.py --device cuda                 # 512x512, 150 classes, batch 16, R101 -> R18
    python benchmarks/step.py --device cpu --size 64 --classes 8 --batch 2 --iters 2 --warm 1 \\
        --teacher deeplabv3_tiny_r101 --student deeplabv3_tiny_r18 --variants literal,blocked
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from segdistill.config import DistillConfig
from segdistill.losses import build_distiller
from segdistill.models import build_model
from segdistill.train import distillation_losses, segmentation_ce
from segdistill.upsample_ce import upsampled_cross_entropy

ROOT = Path(__file__).resolve().parents[1]

REFERENCE_CANDIDATES = (ROOT.parent / "shared" / "bench" / "plain_pytorch_step.py",
                        ROOT / "shared" / "bench" / "plain_pytorch_step.py",
                        ROOT / ".benchref" / "plain_pytorch_step.py")
# our model -> the plain-PyTorch reference's torchvision backbone. The paper models have the reference
# code's deep stem since issue 14; the *_tv_* models are the architecture the reference step builds.
REF_TORCHVISION = {"deeplabv3_r101": "resnet101", "deeplabv3_r18": "resnet18", "deeplabv3_mbv2": "mobilenet_v2",
                   "deeplabv3_tv_r101": "resnet101", "deeplabv3_tv_r18": "resnet18"}


def timeit(fn: Callable[[], object], iters: int, warm: int, sync: Callable[[], None]) -> float:
    for _ in range(warm):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - t0) / iters


def load_reference(path: str | None) -> Any | None:
    candidates = [Path(path)] if path else [p for p in REFERENCE_CANDIDATES if p.is_file()]
    if not candidates or not candidates[0].is_file():
        return None
    spec = importlib.util.spec_from_file_location("plain_pytorch_step", candidates[0])
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    mod.reference_path = str(candidates[0])
    return mod


LEVERS = frozenset({"student", "teacher", "tgraph", "tbf16", "fused"})


def teacher_forward(teacher: torch.nn.Module, extras: set[str], amp: dict[str, Any]) -> Callable[[Any], Any] | None:
    """The frozen teacher's forward with the variant's teacher levers (None when it has none: then
    ``distillation_losses`` calls the teacher itself, as the trainer does). Returns a SegOutput whose
    tensors are cloned out of a CUDA graph's static buffers (``tgraph``)."""
    if not extras & {"teacher", "tgraph", "tbf16"}:
        return None
    import copy

    net = copy.deepcopy(teacher)
    if "tbf16" in extras:
        net = net.to(torch.bfloat16)
    if "tgraph" in extras:
        net = torch.compile(net, mode="reduce-overhead")
    elif "teacher" in extras:
        net = torch.compile(net)

    def forward(x: torch.Tensor) -> Any:
        if "tgraph" in extras:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.no_grad(), torch.autocast(**amp):
            out = net(x.to(torch.bfloat16) if "tbf16" in extras else x)
        if "tgraph" in extras:  # the graph's outputs are overwritten by its next replay
            out = type(out)(*(v.clone() if torch.is_tensor(v) else
                              {k: t.clone() for k, t in v.items()} if isinstance(v, dict) else v for v in out))
        return out

    return forward


def flops_of(fn: Callable[[], object]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--classes", type=int, default=150)
    ap.add_argument("--teacher", default="deeplabv3_r101")
    ap.add_argument("--student", default="deeplabv3_r18")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warm", type=int, default=5)
    ap.add_argument("--aux", action="store_true", help="give the student its aux head (the paper recipe; the reference has none)")
    ap.add_argument("--variants", default="literal,compiled,blocked,blocked+student",
                    help="comma list of CE paths: literal, compiled, blocked; '+student' also compiles the student")
    ap.add_argument("--reference", default=None, help="path of plain_pytorch_step.py (default: ../shared/bench)")
    ap.add_argument("--no-reference", action="store_true")
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
    torch.manual_seed(0)
    x = torch.randn(a.batch, 3, a.size, a.size, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, a.classes, (a.batch, a.size, a.size), device=dev)
    y[:, :8] = 255
    res: dict[str, Any] = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
                           "args": vars(a)}
    log = lambda msg: print(msg, flush=True)  # noqa: E731

    # ---------------- the reference, stepped as its main() steps it
    ref = None if a.no_reference else load_reference(a.reference)
    if ref is not None:
        ref._sync = sync
        rt = ref.Seg(REF_TORCHVISION.get(a.teacher, "resnet101"), a.classes).to(dev).eval().to(memory_format=fmt)
        rs = ref.Seg(REF_TORCHVISION.get(a.student, "resnet18"), a.classes).to(dev).train().to(memory_format=fmt)
        ropt = torch.optim.SGD(rs.parameters(), lr=0.01, momentum=0.9)

        def ref_step(mode: str) -> None:
            with torch.no_grad(), torch.autocast(**amp):
                zt = rt(x).clone()
            with torch.autocast(**amp):
                zs = rs(x)
                loss = F.cross_entropy(F.interpolate(zs, size=y.shape[-2:], mode="bilinear", align_corners=False).float(),
                                       y, ignore_index=255)
                if mode == "cwd":
                    loss = loss + 3.0 * ref.cwd(zs, zt)
                elif mode == "hwd":
                    loss = loss + 3.0 * ref.cwd(zs, zt, w=ref.hwd_weights(zs, zt, y, a.classes))
            ropt.zero_grad(set_to_none=True)
            loss.backward()
            ropt.step()

        if cuda:
            torch.cuda.reset_peak_memory_stats()
        for mode in ("ce", "cwd", "hwd"):
            res[f"reference/{mode}_img_per_s"] = a.batch / timeit(lambda: ref_step(mode), a.iters, a.warm, sync)
        res["reference/peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        res["reference/hwd_over_cwd"] = res["reference/cwd_img_per_s"] / res["reference/hwd_img_per_s"] - 1
        res["reference_path"] = ref.reference_path
        log(f"reference  CE {res['reference/ce_img_per_s']:8.1f}  CWD {res['reference/cwd_img_per_s']:8.1f}  "
            f"HWD {res['reference/hwd_img_per_s']:8.1f} img/s")
        del rt, rs, ropt
        if cuda:
            torch.cuda.empty_cache()
    else:
        log("reference not found (pass --reference PATH); reporting ours only")

    # ---------------- ours: the trainer's step function
    teacher = build_model(a.teacher, a.classes, aux=False).to(dev, memory_format=fmt).eval().requires_grad_(False)
    ce_paths = {"literal": segmentation_ce, "blocked": upsampled_cross_entropy}
    best: tuple[float, str] | None = None
    step_flops = None
    for variant in a.variants.split(","):
        ce_name, *extra_list = variant.split("+")
        extras = set(extra_list)
        if ce_name not in ("literal", "compiled", "blocked") or not extras <= LEVERS or len(extras) != len(extra_list):
            raise SystemExit(f"unknown variant {variant!r} (CE path literal/compiled/blocked, levers {sorted(LEVERS)})")
        ce = torch.compile(segmentation_ce) if ce_name == "compiled" else ce_paths[ce_name]
        torch.manual_seed(1)  # every variant's student starts from the same weights (the loss check below)
        student = build_model(a.student, a.classes, aux=a.aux).to(dev, memory_format=fmt).train()
        opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4,
                              **({"fused": True} if "fused" in extras else {}))
        model = torch.compile(student) if "student" in extras else student
        t_fn = teacher_forward(teacher, extras, amp)  # None: the trainer's own teacher call
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        for method in ("none", "cwd", "hwd"):
            cfg = DistillConfig(method=method, teacher_arch=a.teacher, teacher_checkpoint="-") if method != "none" else DistillConfig()
            distiller = build_distiller(cfg)
            t = teacher if distiller is not None else None

            def step() -> None:
                t_out = t_fn(x) if (t_fn is not None and t is not None) else None
                with torch.autocast(**amp):
                    terms = distillation_losses(model, None if t_out is not None else t, distiller, x, y, alpha=3.0,
                                                aux_weight=0.4, ce=ce, teacher_output=t_out)
                opt.zero_grad(set_to_none=True)
                terms["loss/total"].backward()
                opt.step()

            try:
                if method == "hwd":  # same start, same steps so far: the levers must not change the loss
                    t_out = t_fn(x) if t_fn is not None else None
                    with torch.autocast(**amp):
                        terms = distillation_losses(model, None if t_out is not None else teacher, distiller, x, y,
                                                    alpha=3.0, aux_weight=0.4, ce=ce, teacher_output=t_out)
                    res[f"{variant}/hwd_loss_check"] = float(terms["loss/total"])
                    del terms
                ips = a.batch / timeit(step, a.iters, a.warm, sync)
                res[f"{variant}/{'ce' if method == 'none' else method}_img_per_s"] = ips
                if method == "hwd":
                    if best is None or ips > best[0]:
                        best = (ips, variant)
                    if step_flops is None and not extras:
                        step_flops = flops_of(step)
            except Exception as exc:  # one failing variant must not lose the others
                res[f"{variant}/{method}_error"] = f"{type(exc).__name__}: {exc}"[:500]
                log(f"{variant}/{method}: {res[f'{variant}/{method}_error']}")
        res[f"{variant}/peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        if f"{variant}/hwd_img_per_s" in res and f"{variant}/cwd_img_per_s" in res:
            res[f"{variant}/hwd_over_cwd"] = res[f"{variant}/cwd_img_per_s"] / res[f"{variant}/hwd_img_per_s"] - 1
            log(f"{variant:<17}  CE {res.get(f'{variant}/ce_img_per_s', float('nan')):8.1f}  CWD "
                f"{res[f'{variant}/cwd_img_per_s']:8.1f}  HWD {res[f'{variant}/hwd_img_per_s']:8.1f} img/s  "
                f"HWD/CWD overhead {100 * res[f'{variant}/hwd_over_cwd']:+.1f}%")
        del model, student, opt
        if cuda:
            torch.cuda.empty_cache()

    # ---------------- the time split of one eager step (literal CE), synchronised per phase
    student = build_model(a.student, a.classes, aux=a.aux).to(dev, memory_format=fmt).train()
    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    distiller = build_distiller(DistillConfig(method="hwd", teacher_arch=a.teacher, teacher_checkpoint="-"))
    x_host, y_host = x.cpu(), y.cpu()
    split = {"data": 0.0, "teacher": 0.0, "student_fwd_loss": 0.0, "backward": 0.0, "optimizer": 0.0}
    for i in range(a.warm + a.iters):
        marks = [time.perf_counter()]
        xb = x_host.to(dev, non_blocking=True).contiguous(memory_format=fmt)
        yb = y_host.to(dev, non_blocking=True)
        sync(); marks.append(time.perf_counter())
        with torch.no_grad(), torch.autocast(**amp):
            t_out = teacher(xb)
        sync(); marks.append(time.perf_counter())
        with torch.autocast(**amp):
            terms = distillation_losses(student, None, distiller, xb, yb, alpha=3.0, aux_weight=0.4, teacher_output=t_out)
        sync(); marks.append(time.perf_counter())
        opt.zero_grad(set_to_none=True)
        terms["loss/total"].backward()
        sync(); marks.append(time.perf_counter())
        opt.step()
        sync(); marks.append(time.perf_counter())
        if i >= a.warm:
            for k, (t0, t1) in zip(split, zip(marks, marks[1:])):
                split[k] += (t1 - t0) / a.iters
    total_split = sum(split.values())
    res["time_split_ms"] = {k: round(1000 * v, 3) for k, v in split.items()}
    res["time_split_share"] = {k: round(v / total_split, 3) for k, v in split.items()}
    log("time split (eager, literal CE, HWD, host->device copy as data): "
        + ", ".join(f"{k} {100 * v:.0f}%" for k, v in res["time_split_share"].items()))

    # ---------------- summary
    if best is None:
        raise SystemExit("no variant ran")
    ips, variant = best
    ref_ips = res.get("reference/hwd_img_per_s")
    checks = {k.split("/")[0]: v for k, v in res.items() if k.endswith("/hwd_loss_check")}
    first = next(iter(checks.values()), None)
    res["hwd_loss_rel_diff_vs_first_variant"] = {k: abs(v - first) / max(abs(first), 1e-12) for k, v in checks.items()}
    summary = {
        "device": res["device"],
        "images_per_s": ips,
        "best_variant": variant,
        "reference_images_per_s": ref_ips,
        "ratio": ips / ref_ips if ref_ips else None,
        "hwd_over_cwd": res.get(f"{variant}/hwd_over_cwd"),
        "tflops_achieved": (step_flops * ips / a.batch / 1e12) if step_flops else None,
        "peak_mem_gib": res.get(f"{variant}/peak_mem_gib"),
        "reference_peak_mem_gib": res.get("reference/peak_mem_gib"),
        "max_hwd_loss_rel_diff": max(res["hwd_loss_rel_diff_vs_first_variant"].values(), default=None),
        "details": res,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
