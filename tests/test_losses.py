"""Losses: golden values, agreement with a naive transcription of the paper, and its properties."""

from __future__ import annotations

import math

import pytest
import torch

from segdistill.config import DistillConfig
from segdistill.losses import (
    METHODS, build_distiller, class_pixel_counts, cwd_loss, hwd_loss, hwd_weights, kd_loss, register_method,
)

B, C, h, w, H, W = 2, 5, 4, 4, 16, 16


def _inputs():
    """Deterministic inputs that do not depend on any RNG implementation."""
    n = B * C * h * w
    s = torch.sin(torch.arange(n, dtype=torch.float64) * 0.37).reshape(B, C, h, w) * 3.0
    t = torch.cos(torch.arange(n, dtype=torch.float64) * 0.23 + 0.5).reshape(B, C, h, w) * 3.0
    lab = (torch.arange(B * H * W) // 7 % (C + 1)).reshape(B, H, W)
    lab[lab == C] = 255  # some ignore pixels
    return s.float(), t.float(), lab


# Stored expected values (computed once with this implementation and cross-checked against the
# naive transcription below). A missing key fails the test rather than passing silently.
GOLDEN = {
    "cwd_tau4": 3.3872909546,
    "kd_T1": 1.3464230299,
    "hwd_default": 5.5155639648,
    "hwd_none_correction": 5.5391130447,
    "hwd_softmax_tau3": 4.0052442551,
    "hwd_mu1_beta05": 4.5378184319,
}

CASES = {
    "hwd_default": {},
    "hwd_none_correction": {"pixel_correction": "none"},
    "hwd_softmax_tau3": {"weighting": "softmax", "tau_prime": 3.0},
    "hwd_mu1_beta05": {"mu": 1.0, "beta": 0.5},
}


def naive_hwd(s, t, lab, *, tau=4.0, mu=0.0, sigma=1.0, beta=0.1, pixel_correction="n",
              weighting="smooth", tau_prime=1.0, weights_only=False):
    """Eq. (2)-(7) written with Python loops over images and classes, in float64."""
    s, t = s.double(), t.double()
    b_, c_, hh, ww = s.shape
    total = 0.0
    all_w = []
    small = torch.nn.functional.interpolate(lab[:, None].double(), size=(hh, ww), mode="nearest")[:, 0].long()
    for i in range(b_):
        ps = [torch.softmax(s[i, c].flatten() / tau, 0) for c in range(c_)]
        pt = [torch.softmax(t[i, c].flatten() / tau, 0) for c in range(c_)]
        cd = []
        for c in range(c_):
            v = float(((pt[c] - ps[c]) ** 2).mean())
            if pixel_correction == "n":
                v /= float((small[i] == c).sum()) + 1.0
            cd.append(v)
        m = sum(cd) / c_
        sd = math.sqrt(sum((x - m) ** 2 for x in cd) / (c_ - 1))
        wn = [mu + (x - m) / sd * sigma for x in cd]
        inner = [(1 - beta ** x) / (1 - beta) for x in wn] if weighting == "smooth" else [x / tau_prime for x in wn]
        z = sum(math.exp(x) for x in inner)
        wc = [c_ * math.exp(x) / z for x in inner]
        all_w.append(wc)
        for c in range(c_):
            kl = float((pt[c] * (pt[c].log() - ps[c].log())).sum())
            total += wc[c] * kl
    if weights_only:
        return torch.tensor(all_w, dtype=torch.float64)
    return total * tau * tau / (b_ * c_)


def test_golden_cwd_and_kd():
    s, t, _ = _inputs()
    assert cwd_loss(s, t, tau=4.0).item() == pytest.approx(GOLDEN["cwd_tau4"], rel=1e-5)
    assert kd_loss(s, t, temperature=1.0).item() == pytest.approx(GOLDEN["kd_T1"], rel=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_hwd(case):
    s, t, lab = _inputs()
    got = hwd_loss(s, t, lab, **CASES[case]).item()
    assert got == pytest.approx(GOLDEN[case], rel=1e-5)
    assert got == pytest.approx(naive_hwd(s, t, lab, **CASES[case]), rel=1e-5)


def test_cwd_equals_hwd_with_unit_weights():
    s, t, _ = _inputs()
    ref = naive_hwd(s, t, torch.zeros(B, H, W, dtype=torch.long), beta=0.5, weighting="softmax", tau_prime=1e9)
    assert cwd_loss(s, t).item() == pytest.approx(ref, rel=1e-4)


@pytest.mark.parametrize("case", sorted(CASES))
def test_weights_match_naive_and_sum_to_c(case):
    s, t, lab = _inputs()
    wts = hwd_weights(s, t, lab, **CASES[case])
    assert wts.shape == (B, C)
    torch.testing.assert_close(wts.sum(1), torch.full((B,), float(C)))
    torch.testing.assert_close(wts.double(), naive_hwd(s, t, lab, weights_only=True, **CASES[case]), rtol=1e-5, atol=1e-7)


def test_beta_to_one_tends_to_unsmoothed_weighting():
    s, t, lab = _inputs()
    near_one = hwd_weights(s, t, lab, beta=1 - 1e-7)
    unsmoothed = hwd_weights(s, t, lab, weighting="softmax", tau_prime=1.0)  # C * softmax(w^n)
    torch.testing.assert_close(near_one, unsmoothed, rtol=1e-4, atol=1e-5)


def test_small_beta_ignores_below_mean_channels():
    """Paper Sec. III-C.2: as beta -> 0, channels with w^n < 0 (mu = 0) are ignored."""
    s, t, lab = _inputs()
    wts = hwd_weights(s, t, lab, beta=1e-3)
    ps = torch.softmax(s.reshape(B, C, -1) / 4.0, -1)
    pt = torch.softmax(t.reshape(B, C, -1) / 4.0, -1)
    cd = ((pt - ps) ** 2).mean(-1) / (class_pixel_counts(lab, C, (h, w)) + 1)
    below = cd < cd.mean(1, keepdim=True)  # w^n < 0
    assert below.any() and (~below).any()
    assert (wts[below] < 1e-3).all()
    assert (wts[~below] > 0.1).all()


def test_zero_when_student_equals_teacher():
    s, _, lab = _inputs()
    for fn in (lambda a, b: hwd_loss(a, b, lab), lambda a, b: cwd_loss(a, b), lambda a, b: kd_loss(a, b)):
        assert fn(s, s.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_zero_std_gives_finite_uniform_weights():
    s = torch.zeros(B, C, h, w)
    t = torch.zeros(B, C, h, w)  # every CD equals 0: std over channels is exactly 0
    lab = torch.full((B, H, W), 255)
    wts = hwd_weights(s, t, lab)
    assert torch.isfinite(wts).all()
    torch.testing.assert_close(wts, torch.ones(B, C))
    assert torch.isfinite(hwd_loss(s + 1e-3, t, lab))


def test_gradient_reaches_student_only():
    s, t, lab = _inputs()
    s = s.clone().requires_grad_(True)
    t = t.clone().requires_grad_(True)
    for loss in (hwd_loss(s, t, lab), cwd_loss(s, t), kd_loss(s, t)):
        s.grad = None
        t.grad = None
        loss.backward()
        assert s.grad is not None and s.grad.abs().sum() > 0
        assert t.grad is None


def test_weights_carry_no_gradient():
    s, t, lab = _inputs()
    s = s.clone().requires_grad_(True)
    assert not hwd_weights(s, t, lab).requires_grad


def test_pixel_counts_vectorised_match_loop_and_skip_ignore():
    _, _, lab = _inputs()
    counts = class_pixel_counts(lab, C, (h, w))
    small = torch.nn.functional.interpolate(lab[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
    for i in range(B):
        for c in range(C):
            assert counts[i, c] == (small[i] == c).sum()
    assert counts.sum() == (small != 255).sum()


@pytest.mark.parametrize("kwargs, msg", [
    ({"beta": 0.0}, "beta"), ({"beta": 1.0}, "beta"), ({"sigma": 0.0}, "sigma"), ({"tau": -1.0}, "tau"),
    ({"pixel_correction": "N"}, "pixel_correction"), ({"weighting": "hard"}, "weighting"),
])
def test_bad_options_raise(kwargs, msg):
    s, t, lab = _inputs()
    with pytest.raises(ValueError, match=msg):
        hwd_loss(s, t, lab, **kwargs)


def test_bad_shapes_raise():
    s, t, lab = _inputs()
    with pytest.raises(ValueError, match="same shape"):
        cwd_loss(s, t[:, :3])
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        kd_loss(s[0], t[0])
    with pytest.raises(ValueError, match="labels batch"):
        hwd_loss(s, t, lab[:1])
    with pytest.raises(ValueError, match=r"labels must be \(B, H, W\)"):
        hwd_loss(s, t, lab[:, None])


@pytest.mark.parametrize("method", sorted(m for m in METHODS if not METHODS[m].feature_tap))
def test_every_registered_method(method):
    """The registry is the test matrix: finite, zero at equality, gradient flows to the student.
    (Logit-only methods here; feature-based ones are covered with real models in test_methods.py.)"""
    cfg = DistillConfig(method=method, teacher_arch="deeplabv3_tiny_r101", teacher_checkpoint="x")
    distiller = build_distiller(cfg)
    s, t, lab = _inputs()
    s = s.clone().requires_grad_(True)
    loss = distiller(s, t, lab)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert s.grad.abs().sum() > 0
    assert distiller(t, t, lab).item() == pytest.approx(0.0, abs=1e-6)


def test_registry_rejects_duplicates_and_unknown():
    with pytest.raises(ValueError, match="already registered"):
        register_method("hwd")(type("Again", (METHODS["hwd"],), {}))
    assert build_distiller(DistillConfig(method="none")) is None
