"""Every comparison method (SKD, IFVD, CIRKD, MGD, DIST beside KD, CWD, HWD): golden values of the
pure losses cross-checked against float64 loop transcriptions, the registry as the test matrix on
real tiny models (finite, gradients only where intended, zero at equality), a few training steps for
every method x student family, the trainer's optimiser groups, checkpoints and exact resume, and the
configuration errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from segdistill import METHODS
from segdistill.config import ConfigError, DistillConfig, TrainConfig, flat_keys, param_owners
from segdistill.losses import (
    MemoryBank, build_distiller, contrast_kd_loss, dist_terms, gradient_penalty, ifv_loss, memory_bytes,
    mgd_loss, minibatch_pair_loss, pairwise_similarity_loss, random_keep_mask, reference_alpha,
    wgan_critic_loss, wgan_generator_loss,
)
from segdistill.losses.adversarial import AdversarialCritic, hinge_critic_loss
from segdistill.losses.cirkd import PIXEL_UPDATE_FREQ
from segdistill.models import build_model
from segdistill.train import MODEL_FILE, distillation_losses, fit, save_model_artifact

B, C, h, w, H, W = 2, 5, 4, 4, 16, 16
DS, DT = 3, 6  # student / teacher feature widths (different on purpose)
TEACHER = "deeplabv3_tiny_r101"
TRAINER_TEACHER = "deeplabv3_tiny_r18"  # trainer tests: a cheaper teacher, widths still differ from the MBV2 student
STUDENTS = ("deeplabv3_tiny_r18", "deeplabv3_tiny_mbv2", "pspnet_tiny_r18")
ALL = ("cirkd", "cwd", "dist", "hwd", "ifvd", "kd", "mgd", "skd")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster than two, and kinder to a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _wave(shape, a: float, b: float, scale: float = 1.0) -> torch.Tensor:
    n = math.prod(shape)
    return (torch.sin(torch.arange(n, dtype=torch.float64) * a + b) * scale).reshape(shape)


def _inputs():
    """Deterministic logits, features and labels that do not depend on any RNG implementation."""
    s = _wave((B, C, h, w), 0.37, 0.0, 3.0).float()
    t = _wave((B, C, h, w), 0.23, 0.5, 3.0).float()
    fs = _wave((B, DS, h, w), 0.71, 0.2, 2.0).float()
    ft = _wave((B, DT, h, w), 0.53, 1.1, 2.0).float()
    lab = (torch.arange(B * H * W) // 7 % (C + 1)).reshape(B, H, W)
    lab[lab == C] = 255
    return s, t, fs, ft, lab


# Stored once from this implementation, each cross-checked against the loop transcription below.
# A missing key fails the test (KeyError), it never passes silently.
GOLDEN = {
    "pair_pool2": 0.0357691832,
    "pair_pool1": 0.5495798588,
    "ifv": 0.2275217772,
    "dist_inter": 0.9281773567,
    "dist_intra": 0.9664142132,
    "minibatch_tau01": 0.3760091066,
    "contrast": 7.8749756813,
    "mgd": 384.9324340820,
    "gp_linear": 4.6309671402,
}


# ------------------------------------------------------------------------ loop transcriptions (float64)
def _small_labels(lab, hh, ww):
    return F.interpolate(lab[:, None].double(), size=(hh, ww), mode="nearest")[:, 0].long()


def _pool_unit(f, pool):
    """Max-pool windows (ceil mode) then L2-normalise; returns per image a list of D-vectors."""
    f = f.double()
    bb, d, hh, ww = f.shape
    out = []
    for b_ in range(bb):
        vecs = []
        for y0 in range(0, hh, pool):
            for x0 in range(0, ww, pool):
                v = [max(float(f[b_, k, y, x]) for y in range(y0, min(y0 + pool, hh)) for x in range(x0, min(x0 + pool, ww)))
                     for k in range(d)]
                n = math.sqrt(sum(a * a for a in v))
                vecs.append([a / max(n, 1e-12) for a in v])
        out.append(vecs)
    return out


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def naive_pairwise(fs, ft, pool):
    ps, pt = _pool_unit(fs, pool), _pool_unit(ft, pool)
    err, count = 0.0, 0
    for b_ in range(len(ps)):
        n = len(ps[b_])
        for i in range(n):
            for j in range(n):
                err += (_dot(ps[b_][i], ps[b_][j]) - _dot(pt[b_][i], pt[b_][j])) ** 2
                count += 1
    return err / count


def naive_ifv(fs, ft, lab, num_classes):
    """The reference's per-class loop: every pixel's feature vs. its class centre in its image."""
    def sim_map(f):
        f = f.double()
        bb, d, hh, ww = f.shape
        small = _small_labels(lab, hh, ww)
        out = torch.zeros(bb, hh, ww, dtype=torch.float64)
        for b_ in range(bb):
            for y in range(hh):
                for x in range(ww):
                    c = int(small[b_, y, x])
                    if 0 <= c < num_classes:
                        mask = small[b_] == c
                        centre = [float(f[b_, k][mask].sum()) / (float(mask.sum()) + 1e-6) for k in range(d)]
                    else:
                        centre = [float(f[b_, k, y, x]) for k in range(d)]
                    v = [float(f[b_, k, y, x]) for k in range(d)]
                    out[b_, y, x] = _dot(v, centre) / max(math.sqrt(_dot(v, v)) * math.sqrt(_dot(centre, centre)), 1e-8)
        return out
    return float(((sim_map(fs) - sim_map(ft)) ** 2).mean())


def _pearson(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    den = math.sqrt(sum((x - ma) ** 2 for x in a)) * math.sqrt(sum((y - mb) ** 2 for y in b))
    return num / max(den, 1e-8)


def naive_dist(s, t):
    bb, c, hh, ww = s.shape
    pix = [(b_, y, x) for b_ in range(bb) for y in range(hh) for x in range(ww)]
    inter = [_pearson([float(s[b_, k, y, x]) for k in range(c)], [float(t[b_, k, y, x]) for k in range(c)])
             for b_, y, x in pix]
    intra = [_pearson([float(s[b_, k, y, x]) for b_, y, x in pix], [float(t[b_, k, y, x]) for b_, y, x in pix])
             for k in range(c)]
    return 1 - sum(inter) / len(inter), 1 - sum(intra) / len(intra)


def _softmax(v):
    m = max(v)
    e = [math.exp(x - m) for x in v]
    z = sum(e)
    return [x / z for x in e]


def _kl(p, q):
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q) if a > 0)


def naive_minibatch(fs, ft, tau, pool):
    ps, pt = _pool_unit(fs, pool), _pool_unit(ft, pool)
    bb, total = len(ps), 0.0
    for i in range(bb):
        for j in range(bb):
            n = len(ps[i])
            pair = 0.0
            for a in range(n):
                qs = _softmax([_dot(ps[i][a], ps[j][m]) / tau for m in range(n)])
                qt = _softmax([_dot(pt[i][a], pt[j][m]) / tau for m in range(n)])
                pair += _kl(qt, qs)
            total += pair / n
    return total / (bb * bb)


def naive_contrast(se, te, neg, tau, kd_tau):
    total = 0.0
    for a in range(se.shape[0]):
        ls = [_dot(se[a].tolist(), neg[k].tolist()) / tau / kd_tau for k in range(neg.shape[0])]
        lt = [_dot(te[a].tolist(), neg[k].tolist()) / tau / kd_tau for k in range(neg.shape[0])]
        total += _kl(_softmax(lt), _softmax(ls))
    return total / se.shape[0] * kd_tau * kd_tau


# ------------------------------------------------------------------------ golden values
@pytest.mark.parametrize("pool, key", [(2, "pair_pool2"), (1, "pair_pool1")])
def test_golden_skd_pairwise(pool, key):
    _, _, fs, ft, _ = _inputs()
    got = pairwise_similarity_loss(fs, ft, pool=pool).item()
    assert got == pytest.approx(GOLDEN[key], rel=1e-5)
    assert got == pytest.approx(naive_pairwise(fs, ft, pool), rel=1e-5)


def test_golden_ifv():
    _, _, fs, ft, lab = _inputs()
    got = ifv_loss(fs, ft, lab, num_classes=C).item()
    assert got == pytest.approx(GOLDEN["ifv"], rel=1e-5)
    assert got == pytest.approx(naive_ifv(fs, ft, lab, C), rel=1e-5)


def test_golden_dist():
    s, t, _, _, _ = _inputs()
    inter, intra = dist_terms(s, t)
    assert inter.item() == pytest.approx(GOLDEN["dist_inter"], rel=1e-5)
    assert intra.item() == pytest.approx(GOLDEN["dist_intra"], rel=1e-5)
    ref_inter, ref_intra = naive_dist(s, t)
    assert inter.item() == pytest.approx(ref_inter, rel=1e-5) and intra.item() == pytest.approx(ref_intra, rel=1e-5)


def test_golden_cirkd_minibatch_pairs():
    _, _, fs, ft, _ = _inputs()
    got = minibatch_pair_loss(fs, ft, tau=0.1, pool=2).item()
    assert got == pytest.approx(GOLDEN["minibatch_tau01"], rel=1e-5)
    assert got == pytest.approx(naive_minibatch(fs, ft, 0.1, 2), rel=1e-5)


def test_golden_cirkd_memory_contrast():
    se = F.normalize(_wave((7, 4), 0.31, 0.3), dim=1).float()
    te = F.normalize(_wave((7, 4), 0.17, 0.9), dim=1).float()
    neg = F.normalize(_wave((9, 4), 0.43, 0.4), dim=1).float()
    got = contrast_kd_loss(se, te, neg, tau=0.1, kd_tau=1.0).item()
    assert got == pytest.approx(GOLDEN["contrast"], rel=1e-5)
    assert got == pytest.approx(naive_contrast(se.double(), te.double(), neg.double(), 0.1, 1.0), rel=1e-5)
    got2 = contrast_kd_loss(se, te, neg, tau=0.2, kd_tau=2.0).item()
    assert got2 == pytest.approx(naive_contrast(se.double(), te.double(), neg.double(), 0.2, 2.0), rel=1e-5)


def test_golden_mgd():
    _, _, _, ft, _ = _inputs()
    gen = _wave(tuple(ft.shape), 0.29, 0.7, 2.0).float()
    got = mgd_loss(gen, ft).item()
    ref = sum((a - b) ** 2 for a, b in zip(gen.double().flatten().tolist(), ft.double().flatten().tolist())) / B
    assert got == pytest.approx(GOLDEN["mgd"], rel=1e-5)
    assert got == pytest.approx(ref, rel=1e-5)


def test_golden_adversarial_terms():
    d_s, d_t = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.0, 3.0, -0.5])
    assert wgan_generator_loss(d_s).item() == pytest.approx(-0.5)
    assert wgan_critic_loss(d_s, d_t).item() == pytest.approx(0.5 - 3.5 / 3)
    # the reference's hinge critic (losses/loss.py CriterionAdv('hinge')): mean relu(1 - D_T) + mean relu(1 + D_S)
    assert hinge_critic_loss(d_s, d_t).item() == pytest.approx((0 + 0 + 1.5) / 3 + (1.5 + 0 + 3) / 3)
    # A linear critic D(x) = <v, x>: the gradient is v everywhere, so GP = (||v|| - 1)^2.
    v = _wave((C, h, w), 0.61, 0.1, 0.5).float()

    def critic(x):
        return (x * v).flatten(1).sum(1)

    s, t, _, _, _ = _inputs()
    gp = gradient_penalty(critic, t, s, mix=torch.tensor([0.25, 0.75])).item()
    assert gp == pytest.approx(GOLDEN["gp_linear"], rel=1e-5)
    assert gp == pytest.approx((math.sqrt(sum(x * x for x in v.double().flatten().tolist())) - 1) ** 2, rel=1e-5)


@pytest.mark.parametrize("loss, keys", [("hinge", {"adv_d"}), ("wgan-gp", {"adv_d", "adv_gp"})])
def test_critic_step_per_loss_form(loss, keys):
    torch.manual_seed(0)
    critic = AdversarialCritic(C, d_weight=0.1, gp_weight=10.0, lr=4e-4, loss=loss)
    s, t, _, _, _ = _inputs()
    critic.generator_loss(s, t)
    out = critic.step()
    assert set(out) == keys and all(torch.isfinite(v) for v in out.values())
    with pytest.raises(ValueError, match="adversarial loss"):
        AdversarialCritic(C, d_weight=0.1, gp_weight=10.0, lr=4e-4, loss="wgan")


def test_pure_losses_reject_bad_shapes():
    s, t, fs, ft, lab = _inputs()
    with pytest.raises(ValueError, match=r"\(B, D, h, w\)"):
        pairwise_similarity_loss(fs[0], ft)
    with pytest.raises(ValueError, match="batch"):
        ifv_loss(fs, ft[:1], lab, num_classes=C)
    with pytest.raises(ValueError, match="same shape"):
        dist_terms(s, t[:, :3])
    with pytest.raises(ValueError, match="same shape"):
        mgd_loss(fs, ft)
    with pytest.raises(ValueError, match="mask_ratio"):
        random_keep_mask(2, 4, 4, 1.0)
    with pytest.raises(ValueError, match="tau"):
        minibatch_pair_loss(fs, ft, tau=0.0)


def test_dist_and_pairwise_zero_at_equality_and_mask_ratio():
    s, _, fs, _, lab = _inputs()
    assert sum(x.item() for x in dist_terms(s, s.clone())) == pytest.approx(0.0, abs=1e-6)
    assert pairwise_similarity_loss(fs, fs.clone()).item() == pytest.approx(0.0, abs=1e-7)
    assert ifv_loss(fs, fs.clone(), lab, num_classes=C).item() == pytest.approx(0.0, abs=1e-7)
    assert minibatch_pair_loss(fs, fs.clone()).item() == pytest.approx(0.0, abs=1e-6)
    torch.manual_seed(0)
    keep = random_keep_mask(4, 32, 32, 0.75)
    assert keep.shape == (4, 1, 32, 32) and 0.70 < 1 - keep.mean().item() < 0.80


# ------------------------------------------------------------------------ CIRKD memory
def test_memory_bank_samples_pixels_from_the_class_mask():
    """The reference bug: it enqueued raw positions 0..N_c-1. Here every enqueued pixel of class c
    must carry class c's embedding, even when class c lives only in the bottom rows."""
    torch.manual_seed(0)
    nc, d, hh, ww = 3, 4, 8, 8
    labels = torch.zeros(1, hh, ww, dtype=torch.long)
    labels[0, 6:] = 2  # class 2: the last two rows only (16 pixels)
    labels[0, 0, :3] = 255  # some ignore
    emb = torch.zeros(1, d, hh, ww)
    for c in range(nc):
        emb[0, c][labels[0] == c] = 1.0  # one-hot embedding of the pixel's class
    emb[0, 3][labels[0] == 255] = 1.0
    bank = MemoryBank(nc, d, pixel_memory=40, region_memory=5)
    before = bank.pixel_queue.clone()
    bank.enqueue(emb, labels)
    k2 = min(16, PIXEL_UPDATE_FREQ)
    torch.testing.assert_close(bank.pixel_queue[2, :k2], F.one_hot(torch.tensor(2), d).float().expand(k2, d))
    torch.testing.assert_close(bank.pixel_queue[0, :PIXEL_UPDATE_FREQ], F.one_hot(torch.tensor(0), d).float().expand(PIXEL_UPDATE_FREQ, d))
    torch.testing.assert_close(bank.pixel_queue[1], before[1])  # absent class untouched
    torch.testing.assert_close(bank.region_queue[2, 0], F.one_hot(torch.tensor(2), d).float())
    assert bank.pixel_ptr.tolist() == [PIXEL_UPDATE_FREQ, 0, k2] and bank.region_ptr.tolist() == [1, 0, 1]
    for _ in range(2):  # 16 + 16 + 16 >= 40: the third write wraps to the tail and resets the pointer
        bank.enqueue(emb, labels)
    assert bank.pixel_ptr[0] == 0 and bank.region_ptr[0] == 3


def test_memory_footprint_is_reported_and_capped():
    assert memory_bytes(150, 20000, 2000, 256) > 3.3e9  # the reference default: multi-GB
    student, teacher = build_model("deeplabv3_tiny_r18", C), build_model(TEACHER, C)
    cfg = _cfg("cirkd")
    d = build_distiller(cfg, student=student, teacher=teacher)
    expect = memory_bytes(C, cfg.params.cirkd_pixel_memory, cfg.params.cirkd_region_memory, teacher.feature_channels["head"])
    assert d.describe()["memory_bytes"] == expect
    assert d.memory.nbytes == expect
    big = _cfg("cirkd", cirkd_pixel_memory=200000, cirkd_max_memory_mb=64.0)
    with pytest.raises(ConfigError, match=r"cirkd_pixel_memory=200000.*cirkd_max_memory_mb=64"):
        build_distiller(big, student=student, teacher=teacher)


# ------------------------------------------------------------------------ the registry on real tiny models
def _cfg(method: str, **over) -> DistillConfig:
    return DistillConfig(method=method, teacher_arch=TEACHER, teacher_checkpoint="unused", **over)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(1)
    return build_model(TEACHER, C).eval().requires_grad_(False)


def _batch(size: int = 32):
    x = _wave((2, 3, size, size), 0.013, 0.0, 1.5).float()
    y = (torch.arange(2 * size * size) // 37 % (C + 1)).reshape(2, size, size)
    y[y == C] = 255
    return x, y


def test_registry_is_complete_and_importable():
    assert set(ALL) <= set(METHODS)
    assert {m: reference_alpha(m) for m in ALL} == {
        "cirkd": 1.0, "cwd": 3.0, "dist": 1.0, "hwd": 3.0, "ifvd": 1.0, "kd": 1.0, "mgd": 1.0, "skd": 1.0}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_gradients_reach_only_the_intended_modules(method, teacher):
    torch.manual_seed(2)
    student = build_model("deeplabv3_tiny_r18", C)
    d = build_distiller(_cfg(method), student=student)
    x, y = _batch()
    with torch.no_grad():
        t_out = teacher(x)
    s_out = student(x)
    parts = d.terms(s_out.logits, t_out.logits, y, s_out.features, t_out.features)
    loss = torch.stack(list(parts.values())).sum()
    assert loss.dim() == 0 and torch.isfinite(loss) and all(torch.isfinite(v) for v in parts.values())
    loss.backward()
    cls_grad = student.head.classifier.weight.grad
    if method == "mgd":  # MGD: features only (the head feature), nothing reaches the classifier
        assert cls_grad is None
    else:
        assert cls_grad is not None and cls_grad.abs().sum() > 0
    if d.tap:  # the feature tap's own branch receives gradient
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.backbone.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    own = d.student_parameters()
    assert all(p.grad is not None for p in own), [n for n, p in d.named_parameters() if p.grad is None]
    adversary = getattr(d, "adversary", None)
    if adversary is not None:  # the student's loss puts nothing on the critic
        assert all(p.grad is None for p in adversary.parameters())
        s_before = [p.detach().clone() for p in student.parameters()]
        d_before = [p.detach().clone() for p in adversary.parameters()]
        out = d.after_step(0.5)
        assert set(out) == {"adv_d"} and all(torch.isfinite(v) for v in out.values())  # hinge: no penalty
        assert adversary.optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * d.params.adv_lr)
        assert all(torch.equal(a, b) for a, b in zip(s_before, student.parameters()))
        assert any(not torch.equal(a, b) for a, b in zip(d_before, adversary.parameters()))
        assert not set(map(id, adversary.parameters())) & set(map(id, own))
    else:
        assert d.after_step(1.0) == {}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_terms_vanish_when_student_is_teacher(method):
    torch.manual_seed(3)
    net = build_model("deeplabv3_tiny_r18", C).eval()
    d = build_distiller(_cfg(method), student=net, teacher=net)
    x, y = _batch()
    with torch.no_grad():
        out = net(x)
        parts = d.terms(out.logits, out.logits.clone(), y, out.features, {k: v.clone() for k, v in out.features.items()})
    for name in METHODS[method].zero_at_equality:
        assert parts[name].item() == pytest.approx(0.0, abs=1e-5), name
    assert set(METHODS[method].zero_at_equality) <= set(parts)


@pytest.mark.parametrize("arch", STUDENTS)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_training_steps_every_method_and_student(method, arch, teacher):
    torch.manual_seed(4)
    student = build_model(arch, C)
    d = build_distiller(_cfg(method), student=student)
    opt = torch.optim.SGD(list(student.parameters()) + d.student_parameters(), lr=0.01, momentum=0.9)
    x, y = _batch(32)
    first = [p.detach().clone() for p in d.student_parameters()]
    for _ in range(2):
        terms = distillation_losses(student, teacher, d, x, y, alpha=reference_alpha(method), aux_weight=0.4)
        assert all(torch.isfinite(v) for v in terms.values()), terms
        opt.zero_grad(set_to_none=True)
        terms["loss/total"].backward()
        opt.step()
        d.after_step(1.0)
    assert "loss/distill" in terms
    assert all(not torch.equal(a, b) for a, b in zip(first, d.student_parameters()))


# ------------------------------------------------------------------------ construction and config errors
def test_feature_taps_are_checked_at_construction():
    student = build_model("deeplabv3_tiny_r18", C)
    with pytest.raises(ValueError, match="build it with the models"):
        build_distiller(_cfg("skd"))
    d = build_distiller(_cfg("mgd", feature="stage3"), student=student)
    assert d.required_features == ("stage3",) and d.student_width == student.feature_channels["stage3"]
    assert d.teacher_width == build_model(TEACHER, C).feature_channels["stage3"]  # read from the teacher arch
    assert build_distiller(_cfg("cirkd"), student=student).projector.net[0].in_channels == student.feature_channels["head"]
    with pytest.raises(ValueError, match="needs the teacher's 'stage3' feature"):
        d.terms(torch.zeros(1, C, 4, 4), torch.zeros(1, C, 4, 4), torch.zeros(1, 8, 8, dtype=torch.long),
                {"stage3": torch.zeros(1, 4, 4, 4)}, {})


@pytest.mark.parametrize("field, value, match", [
    ("feature", "stage9", "distill.feature"), ("skd_pair_weight", -1.0, "distill.skd_pair_weight must be >= 0"),
    ("adv_lr", 0.0, "distill.adv_lr must be > 0"), ("mgd_mask_ratio", 1.0, r"distill.mgd_mask_ratio must be in \[0, 1\)"),
    ("cirkd_pixel_contrast", -1, "distill.cirkd_pixel_contrast must be >= 0"),
    ("cirkd_anchors", -1, "distill.cirkd_anchors"), ("skd_pair_pool", 0, "distill.skd_pair_pool"),
    ("cirkd_pair_pool", 65, "distill.cirkd_pair_pool"), ("adv_loss", "wgan", "distill.adv_loss"),
    ("batch_coupling", "x", "distill.batch_coupling"),
    ("ifvd_weight", float("nan"), "distill.ifvd_weight must be a finite number"),
])
def test_config_errors_name_field_and_range(field, value, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(param_owners(field)[0], **{field: value})  # a method that has the parameter


def test_every_weight_is_a_sweepable_flat_key():
    keys = flat_keys()
    for key in ("kd_weight", "skd_pair_weight", "adv_g_weight", "adv_d_weight", "ifvd_weight", "cirkd_pair_weight",
                "cirkd_pixel_weight", "cirkd_region_weight", "mgd_weight", "mgd_mask_ratio", "dist_inter_weight",
                "dist_intra_weight"):
        assert f"distill.{key}" in keys
    teacher = {"distill.teacher_arch": TEACHER, "distill.teacher_checkpoint": "unused"}
    skd = TrainConfig().replace(**teacher, **{"distill.method": "skd", "distill.skd_pair_weight": 3})
    cirkd = TrainConfig().replace(**teacher, **{"distill.method": "cirkd", "distill.cirkd_pixel_memory": 64.0})
    assert skd.distill.params.skd_pair_weight == 3.0 and cirkd.distill.params.cirkd_pixel_memory == 64


# ------------------------------------------------------------------------ through the trainer
def _tiny(out: Path, **over) -> TrainConfig:
    base = {
        "data.num_classes": C, "data.image_size": 40, "data.crop_size": 32, "data.train_images": 8,
        "data.val_images": 2, "optim.batch_size": 2, "optim.iterations": 3, "run.eval_every": 1,
        "run.log_every": 1, "run.out_dir": str(out), "run.progress": False, "run.device": "cpu",
        "run.threads": 1, "model.arch": "deeplabv3_tiny_mbv2", "distill.teacher_arch": TRAINER_TEACHER,
    }
    if over.get("distill.method") == "cirkd":  # small queues (parameters of cirkd only)
        base.update({"distill.cirkd_pixel_memory": 64, "distill.cirkd_region_memory": 8,
                     "distill.cirkd_pixel_contrast": 16, "distill.cirkd_region_contrast": 4})
    base.update(over)
    return TrainConfig().replace(**base)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(5)
    cfg = _tiny(out, **{"model.arch": TRAINER_TEACHER})
    return save_model_artifact(build_model(TRAINER_TEACHER, C), cfg, out / MODEL_FILE)


class _StopAt:
    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def on_eval(self, event):
        return event.iteration >= self.iteration


@pytest.mark.parametrize("method", ["skd", "cirkd", "mgd"])
def test_trainer_optimises_method_modules_and_resumes_exactly(tmp_path, teacher_file, method):
    from segdistill.runstate import setup

    over = {"distill.method": method, "distill.alpha": reference_alpha(method),
            "distill.teacher_checkpoint": str(teacher_file)}
    run = setup(_tiny(tmp_path / "probe", **over))
    in_opt = {id(p) for g in run.optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in run.distiller.student_parameters()} <= in_opt
    adversary = getattr(run.distiller, "adversary", None)
    if adversary is not None:
        assert not {id(p) for p in adversary.parameters()} & in_opt

    straight = fit(_tiny(tmp_path / "a", **over))
    first = fit(_tiny(tmp_path / "b", **over), [_StopAt(1)])
    assert first.stopped_early and first.iterations_done == 1
    resumed = fit(_tiny(tmp_path / "b", **over))
    assert resumed.iterations_done == 3
    sa = torch.load(tmp_path / "a" / "checkpoint" / "state.pt", weights_only=False)
    sb = torch.load(tmp_path / "b" / "checkpoint" / "state.pt", weights_only=False)
    for k in sa["model"]:
        torch.testing.assert_close(sa["model"][k], sb["model"][k], rtol=0, atol=0, msg=f"student {k}")
    assert sa["distiller"].keys() == sb["distiller"].keys() and sa["distiller"]
    for k, v in sa["distiller"].items():
        if k.endswith("_extra_state"):  # the critic's Adam state
            for pid, st in v["optimizer"]["state"].items():
                for name, tensor in st.items():
                    torch.testing.assert_close(tensor, sb["distiller"][k]["optimizer"]["state"][pid][name], rtol=0, atol=0)
        else:
            torch.testing.assert_close(v, sb["distiller"][k], rtol=0, atol=0, msg=f"distiller {k}")
    losses = [r["loss/total"] for r in straight.curves if "loss/total" in r]
    assert losses == [r["loss/total"] for r in resumed.curves if "loss/total" in r]
    logged = {k for r in straight.curves for k in r}
    assert "loss/distill" in logged
    if method == "skd":
        assert {"loss/distill_kd", "loss/distill_pair", "loss/distill_adv_g", "loss/adv_d"} <= logged
        assert any(k.endswith("_extra_state") for k in sa["distiller"])
    if method == "cirkd":
        assert int(sa["distiller"]["memory.pixel_ptr"].sum()) > 0


def _ddp_worker(rank: int, world: int, port: int, queue) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        sums = {}
        for method in ("mgd", "skd"):
            torch.manual_seed(0)  # identical initial weights on every rank, as DDP would broadcast
            student = build_model("deeplabv3_tiny_r18", C)
            t_net = build_model(TRAINER_TEACHER, C).eval().requires_grad_(False)
            d = build_distiller(DistillConfig(method=method, teacher_arch=TRAINER_TEACHER, teacher_checkpoint="-"),
                                student=student, teacher=t_net)
            params = d.student_parameters()  # SKD has none: only its critic, stepped by after_step
            opt = torch.optim.SGD(params, lr=0.1) if params else None
            torch.manual_seed(100 + rank)  # each rank its own data and masks
            x, y = torch.randn(2, 3, 32, 32), torch.randint(0, C, (2, 32, 32))
            with torch.no_grad():
                t_out = t_net(x)
            s_out = student(x)
            loss = d(s_out.logits, t_out.logits, y, s_out.features, t_out.features)
            loss.backward()
            if opt is not None:
                opt.step()
            d.after_step(1.0)
            sums[method] = sum(float(p.detach().double().sum()) for p in d.parameters())
        queue.put((rank, sums))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_method_modules_stay_identical_across_ddp_ranks():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive and all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    got = dict(queue.get(timeout=5) for _ in range(2))
    for method in ("mgd", "skd"):
        assert got[0][method] == pytest.approx(got[1][method], rel=1e-9, abs=1e-9), method


def test_compare_methods_preset_gives_reference_weights_and_three_demo_seeds():
    from segdistill.study.presets import compare_methods_preset, get_preset, method_overrides

    assert method_overrides("none") == {}
    assert {m: method_overrides(m)["distill.alpha"] for m in ALL} == {m: reference_alpha(m) for m in ALL}
    demo = get_preset("demo")
    assert len(compare_methods_preset(demo, seeds_given=False).seeds) >= 3
    two = get_preset("demo", seeds=2)
    assert compare_methods_preset(two, seeds_given=True).seeds == (0, 1)  # an explicit --seeds wins
    smoke = get_preset("smoke")
    assert compare_methods_preset(smoke, seeds_given=False).seeds == smoke.seeds
