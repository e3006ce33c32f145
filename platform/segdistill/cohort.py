"""Cohort training: K students, one data stream, one teacher forward per step.

Grid ablations train many students that differ only in distillation (or optimiser) hyperparameters:
same dataset, teacher, student architecture, batch size, schedule and seed, hence the same images in
the same order. A cohort trains them together: each iteration loads one batch and runs the teacher
once, then every member takes its own step with its own hyperparameters, optimizer, checkpoints,
callbacks and result. Each member's trajectory equals the one it would have had alone: the data
stream depends only on (data, batch size, seed, iteration), each member reseeds the RNG of its step
from (seed, iteration) exactly as a solo run does, and the teacher is a fixed function in eval mode.

    results = fit_cohort([cfg_beta_01, cfg_beta_05, cfg_beta_09])  # one FitResult per member

:func:`cohort_signature` says which configurations can share a cohort (the study layer groups by it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .config import TrainConfig
from .hooks import default_hooks
from .runstate import attach_teacher, batches, load_data, setup
from .train import FitResult, Loop

# Flat config keys that may differ between the members of one cohort; everything else must match.
MEMBER_KEYS = frozenset({
    "optim.lr", "optim.momentum", "optim.weight_decay", "optim.power", "optim.aux_weight",
    "run.out_dir", "run.embedding_pixels", "run.sample_images", "run.progress",
})
SHARED_DISTILL_KEYS = frozenset({"distill.teacher_arch", "distill.teacher_checkpoint"})


def cohort_signature(cfg: TrainConfig) -> tuple[tuple[str, Any], ...]:
    """What a configuration must share with the others of its cohort: data, model, batch size,
    iterations, seed, run settings and the teacher (not the method or its hyperparameters)."""
    flat = cfg.to_flat()
    return tuple(sorted(
        (k, v) for k, v in flat.items()
        if k not in MEMBER_KEYS and (not k.startswith("distill.") or k in SHARED_DISTILL_KEYS)
    ))


def check_cohort(cfgs: Sequence[TrainConfig]) -> None:
    """Raise ValueError unless ``cfgs`` can train as one cohort (naming the first differing field)."""
    if not cfgs:
        raise ValueError("a cohort needs at least one configuration")
    first = dict(cohort_signature(cfgs[0]))
    teachers = {(c.distill.teacher_arch, c.distill.teacher_checkpoint) for c in cfgs if c.distill.method != "none"}
    if len(teachers) > 1:
        raise ValueError(f"cohort members must share one teacher, got {sorted(teachers)}")
    for i, cfg in enumerate(cfgs[1:], start=1):
        sig = dict(cohort_signature(cfg))
        for key in sorted(set(first) | set(sig)):
            if key in SHARED_DISTILL_KEYS and (cfg.distill.method == "none" or cfgs[0].distill.method == "none"):
                continue  # a CE-only member has no teacher to share
            if first.get(key) != sig.get(key):
                raise ValueError(f"cohort member {i} differs from member 0 in {key}: {sig.get(key)!r} vs {first.get(key)!r}")
    dirs = [c.run.out_dir for c in cfgs]
    if len(set(dirs)) != len(dirs):
        raise ValueError(f"cohort members need distinct run.out_dir, got {dirs}")


def fit_cohort(cfgs: Sequence[TrainConfig], callbacks: Sequence[Sequence[object]] | None = None, *,
               resume: bool = True, isolate_failures: bool = False) -> list[FitResult | BaseException]:
    """Train every configuration of ``cfgs`` as one cohort; returns their results in order.

    ``callbacks[i]`` are member i's callbacks (as for :func:`segdistill.train.fit`); a member whose
    callback stops it leaves the cohort, the others go on. With ``resume`` each member continues from
    its own checkpoint; members that are ahead skip the batches they have already trained on.
    ``isolate_failures``: a member whose step raises (e.g. ``NonFiniteLossError``) leaves the cohort
    and its exception takes its place in the returned list (its callbacks' ``on_error(exc)``, where
    they have one, hear of it at once); otherwise the exception propagates.
    """
    cfgs = list(cfgs)
    check_cohort(cfgs)
    cbs = [list(c) for c in callbacks] if callbacks is not None else [[] for _ in cfgs]
    if len(cbs) != len(cfgs):
        raise ValueError(f"{len(cfgs)} configurations but {len(cbs)} callback lists")
    # One data stream and one teacher for all: the datasets, then every member's run on them, then the
    # teacher of the leader (a distilling member when there is one; its logits cache, when it taps no
    # features, serves the others that tap none; the live teacher stays for those that do).
    lead = min(range(len(cfgs)), key=lambda i: cfgs[i].distill.method == "none")
    inputs = load_data(cfgs[lead])
    runs = [setup(cfg, inputs=inputs) for cfg in cfgs]
    leader = runs[lead]
    if leader.distiller is not None:
        attach_teacher(inputs, cfgs[lead], leader.place,
                       cache=not leader.distiller.required_features, keep_live=True)
    loops = [Loop(run, default_hooks(cb)) for run, cb in zip(runs, cbs)]
    t_begin = time.perf_counter()
    for loop in loops:
        loop.begin(resume)
    own0 = [r.train_time + r.eval_time for r in runs]
    total = cfgs[0].optim.iterations
    active = [i for i, r in enumerate(runs) if r.iteration < total]
    failed: dict[int, BaseException] = {}
    if active:
        start = min(runs[i].iteration for i in active)
        t_data = time.perf_counter()
        for offset, (images, labels, keys) in enumerate(batches(leader, start)):
            iteration = start + offset
            due = [i for i in active if runs[i].iteration == iteration]  # members ahead after a resume skip
            live = None
            if any(runs[i].distiller is not None and not runs[i].uses_teacher_cache for i in due):
                live = leader.live_teacher_output(images)
            cached = leader.cached_teacher_output(keys) if any(runs[i].uses_teacher_cache for i in due) else None
            shared_s = (time.perf_counter() - t_data) / max(1, len(due))
            for i in due:
                run = runs[i]
                teacher_output = None if run.distiller is None else (cached if run.uses_teacher_cache else live)
                try:
                    stop = loops[i].step(images, labels, teacher_output, extra_seconds=shared_s)
                except Exception as exc:
                    if not isolate_failures:
                        raise
                    failed[i] = exc
                    for cb in cbs[i]:  # tell the member's callbacks now, not when the cohort ends
                        if hasattr(cb, "on_error"):
                            cb.on_error(exc)
                    stop = True
                if stop:
                    active.remove(i)
            if not active:
                break
            t_data = time.perf_counter()
    # Wall time: each member's own training and evaluation time plus an equal share of the rest
    # (setup, the shared teacher forward is already in train_time), so the members' times sum to
    # the cohort's and cost accounting over rows stays right.
    own = [r.train_time + r.eval_time - t0 for r, t0 in zip(runs, own0)]
    rest = max(0.0, time.perf_counter() - t_begin - sum(own)) / len(runs)
    return [failed[i] if i in failed else loops[i].finish(wall_seconds=own[i] + rest) for i in range(len(runs))]
