"""The performance paths compute what the plain paths compute: the blocked upsample + CE, the teacher
logits cache, and cohort training (K students, one data stream, one teacher forward)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from segdistill.cohort import check_cohort, cohort_signature, fit_cohort
from segdistill.config import TrainConfig
from segdistill.data import build_datasets
from segdistill.teacher_cache import augmentation_variants
from segdistill.train import configure_gpu_backends, fit, segmentation_ce, setup, train
from segdistill.upsample_ce import interp_matrix, upsampled_cross_entropy

TEACHER = "deeplabv3_tiny_r101"
STUDENT = "deeplabv3_tiny_r18"


# ---------------------------------------------------------------- blocked upsample + CE
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("shape", [(2, 5, 7, 9, 56, 72), (1, 3, 5, 5, 17, 23), (2, 4, 8, 8, 8, 8), (2, 4, 6, 6, 3, 5),
                                   (1, 2, 1, 4, 1, 9)])
def test_interp_matrix_is_torch_bilinear(shape, align_corners):
    _, c, h, w, out_h, out_w = shape
    x = torch.randn(1, c, h, w, dtype=torch.float64)
    ref = F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=align_corners)
    a_h = interp_matrix(out_h, h, dtype=torch.float64, align_corners=align_corners)
    a_w = interp_matrix(out_w, w, dtype=torch.float64, align_corners=align_corners)
    torch.testing.assert_close(a_h @ x @ a_w.t(), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 5, 7, 9, 56, 72), (1, 3, 9, 13, 65, 97)])
@pytest.mark.parametrize("block", [1, 700, 1 << 24])
def test_blocked_ce_align_corners_matches_literal_loss_and_gradient(shape, block):
    """model.ce_align_corners=True (the reference's SegCrossEntropyLoss) on the blocked path."""
    b, c, h, w, out_h, out_w = shape
    torch.manual_seed(2)
    x = torch.randn(b, c, h, w, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, c, (b, out_h, out_w))
    y[:, -3:] = 255
    ref = segmentation_ce(x, y, align_corners=True)
    (g_ref,) = torch.autograd.grad(ref, x)
    mine = upsampled_cross_entropy(x, y, align_corners=True, block_elements=block)
    (g_mine,) = torch.autograd.grad(mine, x)
    assert abs(float(mine.detach()) - float(ref.detach())) < 1e-5 * max(1.0, abs(float(ref.detach())))
    torch.testing.assert_close(g_mine, g_ref, rtol=1e-5, atol=1e-8)
    # and it differs from align_corners=False (the flag reaches the maths)
    assert abs(float(upsampled_cross_entropy(x, y).detach()) - float(mine.detach())) > 1e-6


def test_trainer_passes_the_align_corners_fields_to_both_ce_paths(tmp_path):
    """One step with ce_impl literal vs blocked under the reference upsampling: the same losses."""
    from segdistill.config import REFERENCE_UPSAMPLING

    base = TrainConfig().replace(**{**REFERENCE_UPSAMPLING, "data.image_size": 48, "data.crop_size": 48,
                                    "data.num_classes": 5, "data.train_images": 4, "data.val_images": 2,
                                    "optim.iterations": 1, "optim.batch_size": 2, "run.device": "cpu",
                                    "run.progress": False, "run.threads": 1})
    losses = {}
    for impl in ("literal", "blocked"):
        cfg = base.replace(**{"run.ce_impl": impl, "run.out_dir": str(tmp_path / impl)})
        losses[impl] = fit(cfg, resume=False).curves[0]
    for term in ("loss/ce", "loss/aux", "loss/total"):
        assert losses["blocked"][term] == pytest.approx(losses["literal"][term], rel=1e-5), term


@pytest.mark.parametrize("shape", [(2, 5, 7, 9, 56, 72), (2, 24, 16, 16, 128, 128), (1, 3, 5, 5, 17, 23)])
@pytest.mark.parametrize("block", [1, 700, 1 << 24])
def test_blocked_ce_matches_literal_loss_and_gradient(shape, block):
    b, c, h, w, out_h, out_w = shape
    torch.manual_seed(0)
    x = torch.randn(b, c, h, w, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, c, (b, out_h, out_w))
    y[:, :2] = 255  # ignored rows
    y[0, -1, -3:] = 255
    ref = segmentation_ce(x, y)
    (g_ref,) = torch.autograd.grad(ref, x)
    mine = upsampled_cross_entropy(x, y, block_elements=block)
    (g_mine,) = torch.autograd.grad(mine, x)
    assert abs(float(mine.detach()) - float(ref.detach())) < 1e-5 * max(1.0, abs(float(ref.detach())))  # fp32 sum
    torch.testing.assert_close(g_mine, g_ref, rtol=1e-5, atol=1e-8)


def test_blocked_ce_bf16_within_bf16_tolerance_and_all_ignored_is_nan():
    torch.manual_seed(1)
    x = torch.randn(2, 6, 8, 8)
    y = torch.randint(0, 6, (2, 64, 64))
    xb = x.to(torch.bfloat16).requires_grad_(True)
    ref_x = x.clone().requires_grad_(True)
    ref = segmentation_ce(ref_x, y)
    ref.backward()
    mine = upsampled_cross_entropy(xb, y)
    mine.backward()
    assert mine.dtype == torch.float32
    assert abs(float(mine) - float(ref)) < 2e-2
    torch.testing.assert_close(xb.grad.float(), ref_x.grad, rtol=5e-2, atol=5e-4)
    allign = torch.full((2, 64, 64), 255)
    assert math.isnan(float(upsampled_cross_entropy(x, allign))) and math.isnan(float(segmentation_ce(x, allign)))


# ---------------------------------------------------------------- trainer-level equivalence
def tiny(out: Path, **over) -> TrainConfig:
    base = {
        "data.num_classes": 6, "data.image_size": 40, "data.crop_size": 40, "data.train_images": 10,
        "data.val_images": 4, "data.scale_min": 1.0, "data.scale_max": 1.0,
        "optim.batch_size": 2, "optim.iterations": 4, "run.eval_every": 2,
        "run.log_every": 1, "run.out_dir": str(out), "run.progress": False, "run.device": "cpu",
        "model.arch": STUDENT,
    }
    base.update(over)
    return TrainConfig().replace(**base)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    result = fit(tiny(out, **{"model.arch": TEACHER, "optim.iterations": 3}))
    return Path(result.model_path)


def distilled(out: Path, teacher: Path, **over) -> TrainConfig:
    return tiny(out, **{"distill.method": "hwd", "distill.alpha": 1.0, "distill.teacher_arch": TEACHER,
                        "distill.teacher_checkpoint": str(teacher), **over})


def losses(result) -> list[tuple[int, float, float]]:
    return [(r["iteration"], r["loss/total"], r.get("loss/distill", 0.0)) for r in result.curves if "loss/total" in r]


def assert_same_run(a, b, tol=1e-5):
    la, lb = losses(a), losses(b)
    assert [x[0] for x in la] == [x[0] for x in lb] and la
    for (_, ta, da), (_, tb, db) in zip(la, lb):
        assert abs(ta - tb) <= tol * max(1.0, abs(ta)) and abs(da - db) <= tol * max(1.0, abs(da))
    assert abs(a.final_miou - b.final_miou) <= 1e-6


def test_blocked_ce_in_the_trainer_matches_literal(tmp_path, teacher_file):
    a = fit(distilled(tmp_path / "literal", teacher_file))
    b = fit(distilled(tmp_path / "blocked", teacher_file, **{"run.ce_impl": "blocked"}))
    assert_same_run(a, b, tol=1e-4)


def test_teacher_cache_gives_the_live_teachers_losses(tmp_path, teacher_file):
    cache = tmp_path / "cache"
    live = fit(distilled(tmp_path / "live", teacher_file))
    run = setup(distilled(tmp_path / "cached", teacher_file, **{"run.teacher_cache": str(cache)}))
    assert run.uses_teacher_cache and run.teacher is None  # the live teacher is freed
    assert run.teacher_cache is not None and run.teacher_cache.variants == 2 and len(run.teacher_cache) == 20
    cached = train(run)
    assert_same_run(live, cached)
    files = list(cache.glob("teacher-logits-*.pt"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    again = fit(distilled(tmp_path / "cached2", teacher_file, **{"run.teacher_cache": str(cache), "distill.method": "cwd"}))
    assert files[0].stat().st_mtime_ns == stamp and len(list(cache.glob("teacher-logits-*.pt"))) == 1  # reused, not rebuilt
    assert losses(again)[0][2] > 0


def test_teacher_cache_only_for_finite_augmentation(tmp_path, teacher_file):
    train, _, _ = build_datasets(tiny(tmp_path).data)
    assert augmentation_variants(train) == 2
    cfg = distilled(tmp_path / "scaled", teacher_file, **{"data.scale_max": 1.5, "run.teacher_cache": str(tmp_path / "c")})
    assert augmentation_variants(build_datasets(cfg.data)[0]) is None
    run = setup(cfg)
    assert run.teacher_cache is None and run.teacher is not None and not run.uses_teacher_cache
    assert not list((tmp_path / "c").glob("teacher-logits-*.pt"))


def test_cohort_members_equal_their_solo_runs(tmp_path, teacher_file):
    variants = [
        {"distill.method": "none"},
        {"distill.method": "hwd", "distill.beta": 0.5},
        {"distill.method": "cwd", "distill.alpha": 2.0, "optim.lr": 0.02},
    ]
    solo = [fit(distilled(tmp_path / f"solo{i}", teacher_file, **v)) for i, v in enumerate(variants)]
    t0 = time.perf_counter()
    cohort = fit_cohort([distilled(tmp_path / f"member{i}", teacher_file, **v) for i, v in enumerate(variants)])
    elapsed = time.perf_counter() - t0
    for s, c in zip(solo, cohort):
        assert_same_run(s, c)
        assert c.iterations_done == 4
    # each member is charged its share of the cohort's time, not all of it: the shares sum to the total
    # (set-up before the first step is not charged to any member, so only an upper bound holds)
    assert sum(c.wall_time_s for c in cohort) <= elapsed
    assert all(c.wall_time_s > 0 and c.images_per_s > 0 for c in cohort)


def test_cohort_with_teacher_cache_and_resume(tmp_path, teacher_file):
    over = {"run.teacher_cache": str(tmp_path / "cache")}
    cfgs = [distilled(tmp_path / f"m{i}", teacher_file, **over, **{"distill.mu": mu}) for i, mu in enumerate((0.0, 1.0))]
    solo = [fit(distilled(tmp_path / f"s{i}", teacher_file, **{"distill.mu": mu})) for i, mu in enumerate((0.0, 1.0))]

    class StopAt2:
        def on_eval(self, event):
            return event.iteration >= 2

    # member 0 stops at iteration 2 (as a killed trial would); resuming continues both exactly
    first = fit_cohort(cfgs, [[StopAt2()], []])
    assert first[0].iterations_done == 2 and first[0].stopped_early and first[1].iterations_done == 4
    resumed = fit_cohort(cfgs)
    for s, c in zip(solo, resumed):
        assert_same_run(s, c)


def test_cohort_rejects_mismatched_members(tmp_path, teacher_file):
    a = distilled(tmp_path / "a", teacher_file)
    with pytest.raises(ValueError, match="data.num_classes"):
        check_cohort([a, distilled(tmp_path / "b", teacher_file, **{"data.num_classes": 7})])
    with pytest.raises(ValueError, match="run.seed"):
        check_cohort([a, distilled(tmp_path / "b", teacher_file, **{"run.seed": 1})])
    with pytest.raises(ValueError, match="run.deterministic"):  # process-wide GPU flags: one setting per cohort
        check_cohort([a, distilled(tmp_path / "b", teacher_file, **{"run.deterministic": True})])
    with pytest.raises(ValueError, match="distinct run.out_dir"):
        check_cohort([a, a])
    assert cohort_signature(a) == cohort_signature(distilled(tmp_path / "c", teacher_file, **{"distill.beta": 0.9}))


def test_gpu_backends_deterministic_switch(monkeypatch):
    """run.deterministic's process-wide flags (set by the trainer on CUDA; the flags themselves can be
    set without a GPU): deterministic kernels and no autotuning, and back."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        configure_gpu_backends(deterministic=True)
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        import os
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        configure_gpu_backends(deterministic=False)
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
        assert not torch.are_deterministic_algorithms_enabled()
        assert TrainConfig.from_flat({"run.deterministic": True}).run.deterministic is True
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[:2]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])
