"""The trainer: teacher training (CE) or student distillation (CE + aux CE + alpha * method loss).

One run is a :class:`~segdistill.runstate.RunState` (:func:`~segdistill.runstate.setup`), one step
(:func:`train_step`: :func:`distillation_losses`, the paper's Eq. 8 plus the aux head, then SGD) and
the hooks around it (:mod:`segdistill.hooks`: LR schedule, curves, progress, evaluation,
checkpoints, callbacks, figure data), run by a :class:`Loop`. :func:`fit` is the entry point:

    result = fit(cfg, callbacks)                  # = train(setup(cfg), callbacks)

``fit`` runs in the calling process with plain PyTorch (no Ray). If the caller has initialised
``torch.distributed`` (Ray Train's TorchTrainer does), the student is wrapped in DDP, every rank
trains on its own shard of each global batch and evaluation is sharded and all-reduced. A cohort
(:mod:`segdistill.cohort`) is a second driver of the same :meth:`Loop.step` over several runs.
Checkpoints hold the model, optimiser, iteration, best metric, curves and RNG states, and are written
atomically; a resumed run replays exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from .artifacts import (
    load_pretrained_backbone,
    load_teacher,
    save_model_artifact,
    unwrap,
)
from .catalog import last_evals_miou
from .config import TrainConfig
from .evaluation import evaluate, upsample_logits
from .hooks import Hook, default_hooks, poly_lr
from .layout import MODEL_FILE, STATE_FILE
from .models import count_flops, count_params
from .models.segmentor import SegOutput
from .runstate import RunState, batches, configure_gpu_backends, mix_seed, setup
from .upsample_ce import segmentation_ce

__all__ = [
    "MODEL_FILE", "STATE_FILE", "Callback", "EvalEvent", "FitResult", "Loop", "NonFiniteLossError", "check_finite",
    "configure_gpu_backends", "distillation_losses", "fit", "load_pretrained_backbone", "load_teacher", "poly_lr",
    "save_model_artifact", "segmentation_ce", "setup", "train", "train_step", "upsample_logits",
]


# --------------------------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------------------------
@dataclass
class EvalEvent:
    """Passed to ``Callback.on_eval`` after each evaluation (on every rank)."""

    iteration: int
    metrics: dict[str, float]
    checkpoint_dir: str | None  # set on rank 0 when a checkpoint was written at this evaluation
    rank: int = 0
    world_size: int = 1


@dataclass
class FitResult:
    config: TrainConfig
    iterations_done: int
    best_miou: float
    final_miou: float  # mmseg convention (metrics.ConfusionMatrix)
    pixel_acc: float
    per_class: list[dict[str, Any]]
    curves: list[dict[str, Any]]
    params: int
    flops: float
    wall_time_s: float
    images_per_s: float
    device: str
    checkpoint_dir: str | None
    model_path: str | None
    stopped_early: bool = False
    evals: list[dict[str, float]] = field(default_factory=list)
    embeddings: dict[str, np.ndarray] | None = None  # {"features": (N, D), "labels": (N,)} if run.embedding_pixels
    samples: list[dict[str, np.ndarray]] | None = None  # [{"image", "label", "prediction"}] if run.sample_images
    final_miou_all_classes: float = float("nan")  # the reference code's average over all classes
    effective_alpha: float = float("nan")  # the L_distill weight trained with (distill.alpha or the reference's)

    @property
    def last_evals_miou(self) -> float:
        """The reported metric (``catalog.REPORTED_METRIC``): mean val mIoU of the last evaluations."""
        return last_evals_miou(self.evals)


class Callback(Protocol):
    """Any subset of these methods; ``on_eval`` may return True to stop training early."""

    def on_log(self, record: dict[str, float]) -> None: ...
    def on_eval(self, event: EvalEvent) -> bool | None: ...
    def on_end(self, result: FitResult) -> None: ...


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf; the message names the iteration and the term."""


# --------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------
def distillation_losses(student: nn.Module, teacher: nn.Module | None, distiller: nn.Module | None,
                        images: Tensor, labels: Tensor, *, alpha: float, aux_weight: float,
                        ignore_index: int = 255, ce: Callable[..., Tensor] = segmentation_ce,
                        teacher_output: SegOutput | None = None, ce_align_corners: bool = False,
                        aux_align_corners: bool = False) -> dict[str, Tensor]:
    """Forward passes and the named loss terms of one step (paper Eq. 8 plus the aux head):

        loss/total = loss/ce + aux_weight * loss/aux + alpha * loss/distill

    The teacher runs without gradient; the distiller sees both networks' main logits (1/8
    resolution) and named feature dicts; a method with several terms also reports each weighted
    term as ``loss/distill_<name>`` (their sum is ``loss/distill``). ``ce`` is :func:`segmentation_ce`, its ``torch.compile`` d form or
    :func:`~segdistill.upsample_ce.upsampled_cross_entropy` (same maths). ``teacher_output``, when
    given, replaces the teacher's forward (a cohort's shared forward, or cached logits).
    ``ce_align_corners`` / ``aux_align_corners``: the upsampling of the CE and of the aux CE.
    """
    t_logits, t_features = None, None
    if teacher_output is not None:
        t_logits, t_features = teacher_output.logits, teacher_output.features
    elif teacher is not None:
        with torch.no_grad():
            t_out = teacher(images)
        t_logits, t_features = t_out.logits, t_out.features  # (B, C, h, w), named feature taps
    out = student(images)
    terms: dict[str, Tensor] = {"loss/ce": ce(out.logits, labels, ignore_index, align_corners=ce_align_corners)}
    total = terms["loss/ce"]
    if out.aux is not None and aux_weight > 0:
        terms["loss/aux"] = ce(out.aux, labels, ignore_index, align_corners=aux_align_corners)
        total = total + aux_weight * terms["loss/aux"]
    if distiller is not None:
        if t_logits is None:
            raise ValueError("a distillation method needs a teacher or a precomputed teacher_output")
        parts = distiller.terms(out.logits, t_logits, labels, out.features, t_features)  # weighted, named
        terms["loss/distill"] = torch.stack([v.float() for v in parts.values()]).sum()
        if len(parts) > 1:
            terms.update({f"loss/distill_{k}": v for k, v in parts.items()})
        total = total + alpha * terms["loss/distill"]
    terms["loss/total"] = total
    return terms


def check_finite(terms: dict[str, Tensor], iteration: int) -> None:
    """Raise :class:`NonFiniteLossError` naming the iteration and each NaN/inf loss term."""
    finite = torch.stack([v.detach().float() for v in terms.values()]).isfinite()
    if not bool(finite.all()):
        bad = {k: float(terms[k].detach()) for k, ok in zip(terms, finite.tolist()) if not ok}
        raise NonFiniteLossError(f"non-finite loss at iteration {iteration}: {bad}")


def train_step(run: RunState, images: Tensor, labels: Tensor, teacher_output: SegOutput | None = None) -> dict[str, Tensor]:
    """One optimisation step under bf16 autocast (GPU); returns the detached loss terms."""
    cfg = run.cfg
    run.model.train()
    with run.autocast():
        terms = distillation_losses(run.model, run.teacher, run.distiller, images, labels,
                                    alpha=cfg.distill.effective_alpha, aux_weight=cfg.optim.aux_weight,
                                    ignore_index=run.ignore_index, ce=run.ce, teacher_output=teacher_output,
                                    ce_align_corners=cfg.model.ce_align_corners,
                                    aux_align_corners=cfg.model.aux_align_corners)
    check_finite(terms, run.iteration)
    run.optimizer.zero_grad(set_to_none=True)
    terms["loss/total"].backward()
    run.optimizer.step()
    if run.distiller is not None:  # e.g. the SKD/IFVD critic's step, on this step's logits
        lr_scale = run.optimizer.param_groups[0]["lr"] / cfg.optim.lr
        terms.update({f"loss/{k}": v for k, v in run.distiller.after_step(lr_scale).items()})
    return {k: v.detach() for k, v in terms.items()}


# --------------------------------------------------------------------------------------------
# The loop: the step with its hooks
# --------------------------------------------------------------------------------------------
class Loop:
    """One run's step with its hooks. :meth:`begin`, then :meth:`step` per batch until it returns
    True, then :meth:`finish`. A driver feeds the batches: :func:`train` (one run) or
    :func:`segdistill.cohort.fit_cohort` (several runs, one data stream)."""

    def __init__(self, run: RunState, hooks: Sequence[Hook]) -> None:
        self.run = run
        self.hooks = list(hooks)
        self.stopped_early = False  # a hook (e.g. a callback's on_eval) stopped the run before its last iteration
        self.finishing = False  # set by finish(): hooks see the run's last evaluation as such
        self.extras: dict[str, Any] = {}  # FitResult fields contributed by hooks (figure data)

    def begin(self, resume: bool = True) -> None:
        """Continue from the run's checkpoint (``resume``, when there is one) and start the clocks."""
        run = self.run
        state_path = run.ckpt_dir / STATE_FILE
        if resume and state_path.is_file():
            run.restore(state_path)
        for h in self.hooks:
            h.before_run(self)
        run.segment_t0 = time.perf_counter()

    def step(self, images: Tensor, labels: Tensor, teacher_output: SegOutput | None = None,
             extra_seconds: float = 0.0) -> bool:
        """One iteration and its hooks. ``extra_seconds`` (data loading, a share of a cohort's teacher
        forward) is added to the training time. Returns True when the run should stop (its last
        iteration, or a hook asked)."""
        run = self.run
        for h in self.hooks:
            h.before_step(self)
        t0 = time.perf_counter()
        torch.manual_seed(mix_seed(run.cfg.run.seed, 3, run.iteration, run.place.rank))  # dropout etc. of this iteration
        terms = train_step(run, images, labels, teacher_output)
        run.iteration += 1
        run.images_seen += run.cfg.optim.batch_size
        run.train_time += time.perf_counter() - t0 + extra_seconds  # evaluation is not training time
        asked = False
        for h in self.hooks:
            if h.after_step(self, terms):
                asked = True
        if asked and run.iteration < run.cfg.optim.iterations:
            self.stopped_early = True
        return asked or run.iteration >= run.cfg.optim.iterations

    def log(self, record: dict[str, float]) -> None:
        """Pass a curve record to the hooks."""
        for h in self.hooks:
            h.after_log(self, record)

    def evaluate(self) -> bool:
        """Evaluate the student now, record the metrics in the run, tell the hooks; True when a hook
        asks the run to stop."""
        run = self.run
        t0 = time.perf_counter()
        ev = evaluate(run)
        run.eval_time += time.perf_counter() - t0
        conf = ev["conf"]
        miou = conf["miou"]
        run.best_miou = max(run.best_miou, miou) if math.isfinite(miou) else run.best_miou
        metrics = {
            "iteration": run.iteration, "val/miou": miou, "val/miou_all_classes": conf["miou_all_classes"],
            "val/pixel_acc": conf["pixel_acc"], "val/mean_acc": conf["mean_acc"], "val/best_miou": run.best_miou,
            "val/classes_present": conf["classes_present"],
        }
        run.evals.append(metrics)
        run.last_eval = {**metrics, "per_class": ev["per_class"]}
        if run.curves and run.curves[-1]["iteration"] == run.iteration:
            run.curves[-1]["val/miou"] = miou
        else:
            run.curves.append({"iteration": run.iteration, "val/miou": miou})
        event = EvalEvent(run.iteration, {k: float(v) for k, v in metrics.items()}, None, run.place.rank,
                          run.place.world)
        stop = False
        for h in self.hooks:
            if h.after_eval(self, event):
                stop = True
        return stop

    def finish(self, wall_seconds: float | None = None) -> FitResult:
        """The hooks' finish (last evaluation, figure data), the model file and the result.
        ``wall_seconds``: this run's share of the wall time since :meth:`begin` when it shared the
        process with others (a cohort member); default: all of it."""
        run, cfg = self.run, self.run.cfg
        self.finishing = True
        for h in self.hooks:
            h.before_finish(self)
        run.wall_time += time.perf_counter() - run.segment_t0 if wall_seconds is None else wall_seconds
        run.segment_t0 = 0.0
        last = run.last_eval
        model_path = None
        if run.place.rank == 0:
            model_path = str(save_model_artifact(run.student, cfg, run.out_dir / MODEL_FILE,
                                                 {"miou": last.get("val/miou", float("nan"))}))
        try:
            flops = count_flops(cfg.model.arch, run.num_classes, size=512, output_stride=cfg.model.output_stride)
        except Exception:  # FLOPs are a report, never a reason to lose a finished run
            flops = float("nan")
        device_name = torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else "cpu"
        result = FitResult(
            config=cfg,
            iterations_done=run.iteration,
            best_miou=run.best_miou,
            final_miou=last.get("val/miou", float("nan")),
            final_miou_all_classes=last.get("val/miou_all_classes", float("nan")),
            effective_alpha=cfg.distill.effective_alpha,
            pixel_acc=last.get("val/pixel_acc", float("nan")),
            per_class=last.get("per_class", []),
            curves=run.curves,
            params=count_params(unwrap(run.student)),
            flops=flops,
            wall_time_s=run.wall_time,
            images_per_s=run.images_seen / max(run.train_time, 1e-9),
            device=device_name,
            checkpoint_dir=str(run.ckpt_dir),
            model_path=model_path,
            stopped_early=self.stopped_early,
            evals=run.evals,
            embeddings=self.extras.get("embeddings"),
            samples=self.extras.get("samples"),
        )
        for h in self.hooks:
            h.after_finish(self, result)
        return result


def train(run: RunState, callbacks: Sequence[object] = (), *, resume: bool = True,
          hooks: Sequence[Hook] | None = None) -> FitResult:
    """Train a prepared run to its end: the solo driver of :class:`Loop` (``hooks``: default
    :func:`~segdistill.hooks.default_hooks` with ``callbacks``)."""
    loop = Loop(run, default_hooks(callbacks) if hooks is None else hooks)
    loop.begin(resume)
    t_data = time.perf_counter()
    for images, labels, keys in batches(run):
        if loop.step(images, labels, run.cached_teacher_output(keys), extra_seconds=time.perf_counter() - t_data):
            break
        t_data = time.perf_counter()
    return loop.finish()


def fit(cfg: TrainConfig, callbacks: Sequence[object] = (), *, resume: bool = True) -> FitResult:
    """Train a teacher (``distill.method == 'none'``) or distil a student, and return its results.

    With ``resume=True`` an existing ``run.out_dir/checkpoint/state.pt`` is continued exactly.
    """
    return train(setup(cfg), callbacks, resume=resume)
