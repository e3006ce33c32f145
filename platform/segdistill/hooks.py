"""The hooks around the training step: everything a run does besides optimising.

A :class:`~segdistill.train.Loop` calls its hooks, in list order, at these points (each method is
optional; a hook overrides the ones it needs):

    before_run(loop)               after a resume, before the first step
    before_step(loop)              before each step (e.g. set the learning rate)
    after_step(loop, terms)        after each step; True asks the loop to stop
    after_log(loop, record)        a curve record was written (:meth:`Loop.log`)
    after_eval(loop, event)        an evaluation was recorded (:meth:`Loop.evaluate`); True: stop
    before_finish(loop)            the run is over (last evaluation, figure data)
    after_finish(loop, result)     the :class:`~segdistill.train.FitResult` is built

:func:`default_hooks` is the trainer's recipe: poly LR, curve and timing records, the progress bar,
periodic evaluation, checkpoints, the user's callbacks (``on_log`` / ``on_eval`` / ``on_end``),
figure extras. A hook may change the run (LR, stop); user callbacks only observe (and may stop).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch.distributed as dist
from torch import Tensor

from .evaluation import collect_extras

if TYPE_CHECKING:
    from .train import EvalEvent, FitResult, Loop


class Hook:
    """Base class: every point is a no-op."""

    def before_run(self, loop: Loop) -> None: ...
    def before_step(self, loop: Loop) -> None: ...
    def after_step(self, loop: Loop, terms: dict[str, Tensor]) -> bool | None: ...
    def after_log(self, loop: Loop, record: dict[str, float]) -> None: ...
    def after_eval(self, loop: Loop, event: EvalEvent) -> bool | None: ...
    def before_finish(self, loop: Loop) -> None: ...
    def after_finish(self, loop: Loop, result: FitResult) -> None: ...


def poly_lr(base_lr: float, iteration: int, total: int, power: float) -> float:
    """Poly decay: lr * (1 - it / total) ** power."""
    return base_lr * (1.0 - iteration / total) ** power


class LRSchedule(Hook):
    """Sets every parameter group's learning rate to ``poly_lr(optim.lr, iteration, iterations, optim.power)``."""

    def before_step(self, loop: Loop) -> None:
        o, run = loop.run.cfg.optim, loop.run
        lr = poly_lr(o.lr, run.iteration, o.iterations, o.power)
        for group in run.optimizer.param_groups:
            group["lr"] = lr


class CurveWriter(Hook):
    """Every ``run.log_every`` iterations (and the last): a curve record (iteration, lr, every loss
    term, images/s of the training time since the previous record), appended to ``run.curves``
    and passed on through :meth:`Loop.log`."""

    def before_run(self, loop: Loop) -> None:
        self._window_time, self._window_images = loop.run.train_time, 0

    def after_step(self, loop: Loop, terms: dict[str, Tensor]) -> None:
        run, cfg = loop.run, loop.run.cfg
        self._window_images += cfg.optim.batch_size
        if run.iteration % cfg.run.log_every and run.iteration != cfg.optim.iterations:
            return
        record = {"iteration": run.iteration, "lr": run.optimizer.param_groups[0]["lr"],
                  **{k: float(v) for k, v in terms.items()}}
        record["images_per_s"] = self._window_images / max(run.train_time - self._window_time, 1e-9)
        self._window_time, self._window_images = run.train_time, 0
        run.curves.append(record)
        loop.log(record)


class Progress(Hook):
    """A tqdm bar on rank 0 (``run.progress``): iterations, the latest loss and learning rate."""

    def __init__(self) -> None:
        self._bar: Any = None

    def before_run(self, loop: Loop) -> None:
        run, cfg = loop.run, loop.run.cfg
        if cfg.run.progress and run.place.rank == 0 and run.iteration < cfg.optim.iterations:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=cfg.optim.iterations, initial=run.iteration, unit="it", dynamic_ncols=True,
                             desc=f"{cfg.model.arch} [{cfg.distill.method}]", leave=False)

    def after_log(self, loop: Loop, record: dict[str, float]) -> None:
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{record['loss/total']:.3f}", lr=f"{record['lr']:.2e}")

    def after_step(self, loop: Loop, terms: dict[str, Tensor]) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def before_finish(self, loop: Loop) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class PeriodicEval(Hook):
    """Evaluates every ``run.eval_every`` iterations (0 = at the end only), at the last iteration,
    and at the finish if the last iteration had no evaluation."""

    def before_run(self, loop: Loop) -> None:
        self.every = loop.run.cfg.eval_period

    def after_step(self, loop: Loop, terms: dict[str, Tensor]) -> bool:
        it = loop.run.iteration
        if it % self.every == 0 or it == loop.run.cfg.optim.iterations:
            return loop.evaluate()
        return False

    def before_finish(self, loop: Loop) -> None:
        last = loop.run.last_eval
        if not last or last.get("iteration") != loop.run.iteration:
            loop.evaluate()


class Checkpointer(Hook):
    """Writes ``checkpoint/state.pt`` (rank 0) at the evaluations of every ``run.checkpoint_every``
    iterations (0 = every evaluation), the last iteration's and the finish's; other ranks wait for it.
    Sets ``event.checkpoint_dir`` for the hooks after it."""

    def before_run(self, loop: Loop) -> None:
        self.every = loop.run.cfg.checkpoint_period

    def after_eval(self, loop: Loop, event: EvalEvent) -> None:
        run = loop.run
        if not (loop.finishing or event.iteration % self.every == 0 or event.iteration == run.cfg.optim.iterations):
            return
        if run.place.rank == 0:
            event.checkpoint_dir = run.save()
        if run.place.world > 1:
            dist.barrier()


class Callbacks(Hook):
    """The user's observers (:class:`~segdistill.train.Callback`): ``on_log(record)``,
    ``on_eval(event)`` (True stops the run early), ``on_end(result)``; each method optional."""

    def __init__(self, callbacks: Sequence[object] = ()) -> None:
        self.callbacks = list(callbacks)

    def _call(self, name: str, arg: Any) -> bool:
        stop = False
        for cb in self.callbacks:
            fn = getattr(cb, name, None)
            if fn is not None and fn(arg):
                stop = True
        return stop

    def after_log(self, loop: Loop, record: dict[str, float]) -> None:
        self._call("on_log", record)

    def after_eval(self, loop: Loop, event: EvalEvent) -> bool:
        return self._call("on_eval", event)

    def after_finish(self, loop: Loop, result: FitResult) -> None:
        self._call("on_end", result)


class FigureExtras(Hook):
    """The opt-in figure data of the final student (rank 0): ``run.embedding_pixels`` head features
    and ``run.sample_images`` predictions (:func:`segdistill.evaluation.collect_extras`)."""

    def before_finish(self, loop: Loop) -> None:
        if loop.run.place.rank == 0:
            loop.extras["embeddings"], loop.extras["samples"] = collect_extras(loop.run)


def default_hooks(callbacks: Sequence[object] = ()) -> list[Hook]:
    """The trainer's hooks, in the order they run at each point."""
    return [LRSchedule(), CurveWriter(), Progress(), PeriodicEval(), Checkpointer(), Callbacks(callbacks),
            FigureExtras()]
