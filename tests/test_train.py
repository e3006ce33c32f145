"""The trainer end to end on tiny synthetic data: teacher, distillation, callbacks, exact resume,
teacher checks, non-finite losses."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from segdistill.config import TrainConfig
from segdistill.evaluation import evaluate
from segdistill.runstate import ValTeacherLogits
from segdistill.train import MODEL_FILE, NonFiniteLossError, fit, load_teacher, setup, train

TEACHER = "deeplabv3_tiny_r101"
STUDENT = "deeplabv3_tiny_r18"


def tiny(out: Path, **over) -> TrainConfig:
    base = {
        "data.num_classes": 6, "data.image_size": 48, "data.crop_size": 40, "data.train_images": 12,
        "data.val_images": 4, "optim.batch_size": 2, "optim.iterations": 4, "run.eval_every": 2,
        "run.log_every": 1, "run.out_dir": str(out), "run.progress": False, "run.device": "cpu",
        "model.arch": STUDENT,
    }
    base.update(over)
    return TrainConfig().replace(**base)


class Recorder:
    def __init__(self, stop_at: int | None = None) -> None:
        self.logs, self.evals, self.ended, self.stop_at = [], [], [], stop_at

    def on_log(self, record):
        self.logs.append(record)

    def on_eval(self, event):
        self.evals.append(event)
        return self.stop_at is not None and event.iteration >= self.stop_at

    def on_end(self, result):
        self.ended.append(result)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    result = fit(tiny(out, **{"model.arch": TEACHER, "optim.iterations": 2}))
    assert result.model_path and Path(result.model_path).is_file()
    return Path(result.model_path)


def test_teacher_run_reports_everything(tmp_path):
    rec = Recorder()
    res = fit(tiny(tmp_path), [rec])
    assert res.iterations_done == 4 and not res.stopped_early
    assert [e.iteration for e in rec.evals] == [2, 4]
    assert all(e.checkpoint_dir == str(tmp_path / "checkpoint") for e in rec.evals)
    assert "val/miou" in rec.evals[-1].metrics and 0.0 <= res.final_miou <= 1.0
    assert [r["iteration"] for r in rec.logs] == [1, 2, 3, 4]
    assert {"loss/total", "loss/ce", "loss/aux", "lr", "images_per_s"} <= set(rec.logs[0])
    assert rec.logs[0]["lr"] == pytest.approx(0.01) and rec.logs[-1]["lr"] < rec.logs[0]["lr"]  # poly decay
    assert rec.ended == [res]
    assert len(res.per_class) == 6 and all(math.isnan(r["td"]) for r in res.per_class)  # no teacher: no TD
    assert res.params > 0 and res.images_per_s > 0 and res.device == "cpu"
    assert (tmp_path / "checkpoint" / "state.pt").is_file() and (tmp_path / MODEL_FILE).is_file()


@pytest.mark.parametrize("method", ["kd", "cwd", "hwd"])
def test_distillation_runs_and_reports_td_ntd(tmp_path, teacher_file, method):
    cfg = tiny(tmp_path, **{"distill.method": method, "distill.teacher_arch": TEACHER,
                            "distill.teacher_checkpoint": str(teacher_file), "optim.iterations": 2})
    rec = Recorder()
    res = fit(cfg, [rec])
    assert all("loss/distill" in r and math.isfinite(r["loss/distill"]) for r in rec.logs)
    present = [r for r in res.per_class if r["present"]]
    assert present and all(math.isfinite(r["td"]) and math.isfinite(r["ntd"]) for r in present)
    assert res.effective_alpha == {"kd": 1.0, "cwd": 3.0, "hwd": 3.0}[method]  # alpha unset: the reference's
    assert 0.0 <= res.final_miou_all_classes <= res.final_miou + 1e-12  # all-classes average: never higher


def test_teacher_validation_logits_are_computed_once_and_read_back_exactly(tmp_path, teacher_file):
    """An evaluation keeps the teacher's validation logits (Inputs.val_teacher_logits, shared by a
    cohort's members): the next evaluation runs no teacher forward and measures exactly the same;
    with no budget every evaluation computes them again, to the same values."""
    cfg = tiny(tmp_path, **{"distill.method": "hwd", "distill.teacher_arch": TEACHER,
                            "distill.teacher_checkpoint": str(teacher_file)})
    run = setup(cfg)
    calls = []
    run.teacher.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    first = evaluate(run)
    assert sum(calls) == len(run.val_ds) and run.inputs.val_teacher_logits.nbytes > 0
    second = evaluate(run)
    assert sum(calls) == len(run.val_ds), "the second evaluation ran the teacher again"
    run.inputs.val_teacher_logits = ValTeacherLogits(budget=0)
    third = evaluate(run)
    assert sum(calls) == 2 * len(run.val_ds) and run.inputs.val_teacher_logits.nbytes == 0
    tds = [[(r["td"], r["ntd"]) for r in e["per_class"] if r["present"]] for e in (first, second, third)]
    assert tds[0] and all(math.isfinite(td) for td, _ in tds[0])
    assert tds[0] == tds[1] == tds[2]


def test_teacher_is_frozen_and_checked(tmp_path, teacher_file):
    teacher = load_teacher(teacher_file, arch=TEACHER, num_classes=6, device=torch.device("cpu"))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(ValueError, match="architecture"):
        load_teacher(teacher_file, arch=STUDENT, num_classes=6, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="classes"):
        load_teacher(teacher_file, arch=TEACHER, num_classes=7, device=torch.device("cpu"))
    with pytest.raises(FileNotFoundError):
        load_teacher(tmp_path / "missing.pt", arch=TEACHER, num_classes=6, device=torch.device("cpu"))
    cfg = tiny(tmp_path, **{"distill.method": "hwd", "distill.teacher_arch": TEACHER,
                            "distill.teacher_checkpoint": str(teacher_file), "data.num_classes": 7})
    with pytest.raises(ValueError, match="predicts 6 classes"):
        fit(cfg)


def test_resume_is_exact(tmp_path, teacher_file):
    over = {"distill.method": "hwd", "distill.teacher_arch": TEACHER, "distill.teacher_checkpoint": str(teacher_file),
            "optim.iterations": 6, "run.eval_every": 3}
    straight = fit(tiny(tmp_path / "a", **over))
    rec = Recorder(stop_at=3)  # stop after the checkpoint at iteration 3, as if interrupted
    first = fit(tiny(tmp_path / "b", **over), [rec])
    assert first.stopped_early and first.iterations_done == 3
    resumed = fit(tiny(tmp_path / "b", **over))
    assert resumed.iterations_done == 6
    wa = torch.load(tmp_path / "a" / MODEL_FILE, weights_only=False)["state_dict"]
    wb = torch.load(tmp_path / "b" / MODEL_FILE, weights_only=False)["state_dict"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=f"{k} differs after resume")
    assert [r["loss/total"] for r in straight.curves if "loss/total" in r] == \
        [r["loss/total"] for r in resumed.curves if "loss/total" in r]
    assert resumed.final_miou == straight.final_miou


def test_resume_refuses_a_different_config(tmp_path):
    fit(tiny(tmp_path, **{"optim.iterations": 2}))
    with pytest.raises(ValueError, match="different 'optim' config"):
        fit(tiny(tmp_path, **{"optim.iterations": 2, "optim.lr": 0.02}))
    fit(tiny(tmp_path, **{"optim.iterations": 2, "optim.lr": 0.02}), resume=False)  # explicit fresh start works


def test_non_finite_loss_names_iteration_and_term(tmp_path):
    run = setup(tiny(tmp_path))
    run.student.head.classifier.register_forward_hook(lambda m, i, o: o * float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"iteration 0.*loss/ce"):
        train(run)


def test_opt_in_figure_data_reaches_parquet(tmp_path):
    from segdistill.results import decode_sample, read_table, record_from_fit, write_trial

    res = fit(tiny(tmp_path / "run", **{"optim.iterations": 1, "run.embedding_pixels": 30, "run.sample_images": 2}))
    assert res.embeddings["features"].shape[0] == 30 and res.embeddings["labels"].shape == (30,)
    assert len(res.samples) == 2 and res.samples[0]["image"].shape == (48, 48, 3)
    write_trial(tmp_path / "results", record_from_fit(res, study="s", trial_id="t0"))
    emb = read_table(tmp_path / "results", "embeddings")
    assert len(emb) == 30 and set(emb["label"]) <= set(range(6))
    sample = decode_sample(read_table(tmp_path / "results", "samples").iloc[0])
    assert (sample["prediction"] == res.samples[0]["prediction"]).all()
    plain = fit(tiny(tmp_path / "plain", **{"optim.iterations": 1}))
    assert plain.embeddings is None and plain.samples is None


def test_hooks_act_on_the_run_and_stop_it(tmp_path):
    """Hooks are the loop's extension points: one that runs after the schedule changes every step's
    learning rate; one whose after_step says True stops the run early (checkpointed, resumable)."""
    from segdistill.hooks import Hook, LRSchedule, default_hooks, poly_lr

    class HalfLR(Hook):
        def before_step(self, loop):
            for group in loop.run.optimizer.param_groups:
                group["lr"] *= 0.5

    class StopAt(Hook):
        def after_step(self, loop, terms):
            return loop.run.iteration == 3

    cfg = tiny(tmp_path, **{"optim.iterations": 4, "run.eval_every": 1})
    hooks = default_hooks()
    assert isinstance(hooks[0], LRSchedule)
    res = train(setup(cfg), hooks=[hooks[0], HalfLR(), *hooks[1:], StopAt()])
    lrs = [r["lr"] for r in res.curves if "lr" in r]
    assert lrs == [0.5 * poly_lr(cfg.optim.lr, i, 4, cfg.optim.power) for i in range(3)]
    assert res.iterations_done == 3 and res.stopped_early
    resumed = fit(cfg)  # the default recipe continues from the checkpoint of iteration 3
    assert resumed.iterations_done == 4 and not resumed.stopped_early
    assert [r["iteration"] for r in resumed.curves if "lr" in r] == [1, 2, 3, 4]
