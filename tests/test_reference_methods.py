"""Every distillation method *at its defaults* computes what the reference code computes.

Goldens: tests/fixtures/reference/methods/ (copied from ../shared/reference/methods/; METHODS.md
there says what each array is). They hold each reference criterion's loss and gradient (w.r.t. the
student logits and the student feature) on fixed inputs, at the reference's hyperparameters and its
training scripts' weights, computed in float64 with the unmodified reference code. Inputs, label
maps, MGD masks, CIRKD negatives and the fill rule of the trainable parts are rebuilt here by the
fixture's own ``make_inputs.py``.

Here each method runs exactly as the trainer runs it: the registered distiller built from a
``DistillConfig`` with nothing but ``method`` set, its terms summed and multiplied by
``DistillConfig.effective_alpha`` (the alpha a user gets by not setting it), float32 inputs.
What is pinned, and why (the goldens pin the same things in the reference):
- SKD/IFVD: the adversarial term is left out (its critic is random; so are the goldens').
- CIRKD: the memory queues hold the fixture's fixed negatives (exactly the reference's per-class
  sample size of them), the enqueue is a no-op; the sampling itself runs unpatched, so a wrong
  per-class sample size fails.
- MGD: ``torch.rand`` returns the fixture's mask (segdistill keeps where rand <= 1 - ratio); the
  loss barely depends on the student (METHODS.md, "Caveats"), so the gradient and the student part
  of the loss are compared.

``python tests/test_reference_methods.py`` prints the parity table (abs/rel loss error, gradient error).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from segdistill.config import DistillConfig
from segdistill.losses import METHODS, build_distiller
from segdistill.models import build_model

FIX = Path(__file__).resolve().parent / "fixtures" / "reference" / "methods"
TEACHER = "deeplabv3_tiny_r101"
NUM_CLASSES = 6
# tolerances on norm-relative errors ||ours - golden|| / ||golden|| for a float32 implementation
# (METHODS.md "Caveats": 1e-5; the CIRKD memory terms, KLs of nearly uniform distributions over
# thousands of entries, 1e-4); the measured errors are ~10x below these.
TOL = 1e-5
TOL_MEMORY = 1e-4
TOL_MGD = 5e-5  # MGD's gradient through two 3x3 256-channel convs: the reference itself moves by 7.7e-6 in float32


def _load_make_inputs():
    spec = importlib.util.spec_from_file_location("segdistill_fixture_make_inputs", FIX / "make_inputs.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


MAKE = _load_make_inputs()


@lru_cache(maxsize=1)
def golden() -> dict[str, np.ndarray]:
    with np.load(FIX / "golden_methods.npz") as z:
        return {k: z[k] for k in z.files}


@lru_cache(maxsize=1)
def inputs() -> dict[str, np.ndarray]:
    return MAKE.build_inputs()


def _leaf(name: str) -> torch.Tensor:
    return torch.tensor(inputs()[name], dtype=torch.float32, requires_grad=True)


def _const(name: str) -> torch.Tensor:
    return torch.tensor(inputs()[name], dtype=torch.float32)


def default_config(method: str) -> DistillConfig:
    """What a user gets by naming the method and nothing else."""
    return DistillConfig(method=method, teacher_arch=TEACHER, teacher_checkpoint="teacher.pt")


def make_distiller(cfg: DistillConfig, s_width: int = 0, t_width: int = 0):
    cls = METHODS[cfg.method]
    kw: dict[str, Any] = {"ignore_index": 255, "num_classes": NUM_CLASSES}
    if cls.feature_tap:
        tap = cfg.params.feature or cls.feature_tap
        kw.update(student_channels={tap: s_width}, teacher_channels={tap: t_width})
    return cls(cfg, **kw)


@contextlib.contextmanager
def pinned_rand(values: torch.Tensor):
    """``torch.rand(...)`` returns ``values`` (for MGD's mask draw)."""
    real = torch.rand

    def fake(*shape, **kw):
        size = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)) else shape
        assert tuple(size) == tuple(values.shape), (size, values.shape)
        return values.clone().to(kw.get("device") or values.device)

    torch.rand = fake
    try:
        yield
    finally:
        torch.rand = real


# --------------------------------------------------------------------------- one case per golden entry
# Each case returns {array name: our value} for the arrays of one golden entry.
Case = Callable[[], dict[str, np.ndarray]]


def _run(cfg: DistillConfig, *, feats: str = "", terms: tuple[str, ...] | None = None, prepare=None,
         context=contextlib.nullcontext) -> dict[str, np.ndarray]:
    """effective_alpha * (sum of ``terms``, default all but adv_g) of the distiller at ``cfg``, and its
    gradients w.r.t. the student logits and (if ``feats``) the student feature."""
    torch.manual_seed(0)  # CIRKD's negative sampling order (the loss does not depend on it beyond rounding)
    sl, tl = _leaf("s_logits"), _const("t_logits")
    labels = torch.tensor(inputs()["labels"])
    s_feat = t_feat = None
    s_width = t_width = 0
    if feats:
        s_name, t_name = ("s_feat128", "t_feat256") if feats == "128" else ("s_feat", "t_feat")
        s_feat, t_feat = _leaf(s_name), _const(t_name)
        s_width, t_width = s_feat.shape[1], t_feat.shape[1]
    d = make_distiller(cfg, s_width, t_width)
    if prepare is not None:
        prepare(d)
    tap = d.tap
    with context():
        parts = d.terms(sl, tl, labels, {tap: s_feat} if tap else None, {tap: t_feat} if tap else None)
    names = terms if terms is not None else tuple(k for k in parts if k != "adv_g")
    loss = cfg.effective_alpha * torch.stack([parts[k].float() for k in names]).sum()
    wrt = [sl] + ([s_feat] if feats else [])
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    out = {"loss": loss.detach().double().numpy()}
    if grads[0] is not None:
        out["grad_logits"] = grads[0].double().numpy()
    if feats:
        out["grad_feat"] = grads[1].double().numpy()
    out["_distiller"] = d  # type: ignore[assignment]
    return out


def _fixed_bank(d) -> None:
    """CIRKD: queues := the fixture's negatives (Q per class, class-major), enqueue := no-op."""
    fill_projection(d.projector)
    bank = d.memory
    for name, key in (("pixel_queue", "cirkd_pixel_negatives"), ("region_queue", "cirkd_region_negatives")):
        neg = torch.tensor(inputs()[key], dtype=torch.float32)
        setattr(bank, name, neg.reshape(NUM_CLASSES, -1, neg.shape[1]).clone())
    bank.enqueue = lambda *a, **k: None


def fill_projection(projector) -> None:
    """The fill rule over ProjectionHead.net's state_dict (= the reference project_head's order)."""
    MAKE.fill_params(projector.net)


def _mgd_case(mask_name: str) -> dict[str, np.ndarray]:
    keep = torch.tensor(inputs()[mask_name], dtype=torch.float32)  # 1 = kept
    captured: dict[str, torch.Tensor] = {}

    def prepare(d) -> None:
        MAKE.fill_params(d.generator)
        d.generator.generator.register_forward_hook(lambda m, i, o: captured.__setitem__("g", o))

    # segdistill keeps where rand <= 1 - mask_ratio: rand 0 keeps, rand 1 masks
    cfg = default_config("mgd")
    out = _run(cfg, feats="128", prepare=prepare, context=lambda: pinned_rand(1.0 - keep))
    g, t = captured["g"].detach().double(), _const("t_feat256").double()
    w = out["_distiller"].params.mgd_weight * cfg.effective_alpha
    out["student_part"] = (w * ((g * g).sum() - 2 * (g * t).sum()) / g.shape[0]).numpy()
    return out


def _hwd(**over) -> DistillConfig:
    return dataclasses.replace(default_config("hwd"), **over)


CASES: dict[str, tuple[str, Case]] = {
    # entry: (what runs, how)
    "kd_T1": ("kd defaults x alpha", lambda: _run(default_config("kd"))),
    "cwd_tau4_x3": ("cwd defaults x alpha", lambda: _run(default_config("cwd"))),
    "hwd_paper_x3": ("hwd defaults x alpha (paper form)", lambda: _run(default_config("hwd"))),
    "hwd_readme_x3": ("hwd, released recipe (mu 1, no N_c)",
                      lambda: _run(_hwd(mu=1.0, pixel_correction="none"))),
    "hwd_softmax_tp5_x3": ("hwd, softmax weighting tau' 5, mu 1, no N_c",
                           lambda: _run(_hwd(weighting="softmax", tau_prime=5.0, mu=1.0, pixel_correction="none"))),
    "dist": ("dist defaults x alpha", lambda: _run(default_config("dist"))),
    "dist_inter": ("dist term 'inter'", lambda: _run(default_config("dist"), terms=("inter",))),
    "dist_intra": ("dist term 'intra'", lambda: _run(default_config("dist"), terms=("intra",))),
    "skd_total": ("skd defaults x alpha (kd + pair)", lambda: _run(default_config("skd"), feats="12")),
    "skd_pair_x10": ("skd term 'pair'", lambda: _run(default_config("skd"), feats="12", terms=("pair",))),
    "ifvd_total": ("ifvd defaults x alpha (kd + ifv)", lambda: _run(default_config("ifvd"), feats="12")),
    "ifvd_x20": ("ifvd term 'ifv'", lambda: _run(default_config("ifvd"), feats="12", terms=("ifv",))),
    "cirkd_total": ("cirkd defaults x alpha (kd + pair + memory)",
                    lambda: _run(default_config("cirkd"), feats="128", prepare=_fixed_bank)),
    "cirkd_pair_128": ("cirkd term 'pair'",
                       lambda: _run(default_config("cirkd"), feats="128", terms=("pair",), prepare=_fixed_bank)),
    "cirkd_pair": ("cirkd term 'pair' (12 -> 20 ch)",
                   lambda: _run(default_config("cirkd"), feats="12", terms=("pair",), prepare=lambda d: None)),
    "cirkd_mem_pixel_x0.1": ("cirkd term 'memory_pixel'",
                             lambda: _run(default_config("cirkd"), feats="128", terms=("memory_pixel",),
                                          prepare=_fixed_bank)),
    "cirkd_mem_region_x0.1": ("cirkd term 'memory_region'",
                              lambda: _run(default_config("cirkd"), feats="128", terms=("memory_region",),
                                           prepare=_fixed_bank)),
    "mgd_keep25_x2e-5": ("mgd defaults x alpha, reference mask density", lambda: _mgd_case("mgd_keep25")),
    "mgd_keep75_x2e-5": ("mgd defaults x alpha, 75% kept", lambda: _mgd_case("mgd_keep")),
}
# arrays compared per entry; MGD's loss is ~ sum(t^2)/N whatever the student does, so its gradient
# and its student part carry the check (the loss is compared too, it just proves little)
MEMORY_ENTRIES = {"cirkd_total", "cirkd_mem_pixel_x0.1", "cirkd_mem_region_x0.1"}


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.linalg.norm(np.asarray(ours, np.float64) - ref) / max(np.linalg.norm(ref), 1e-300))


@lru_cache(maxsize=None)
def measured(entry: str) -> dict[str, tuple[float, float]]:
    """{array: (abs error (max |diff|), norm-relative error)} for one golden entry."""
    gold = golden()
    ours = CASES[entry][1]()
    out = {}
    for key in sorted(k.rsplit(".", 1)[1] for k in gold if k.rsplit(".", 1)[0] == entry):
        if key == "weights":  # HWD's internal weights: not an output of a distiller
            continue
        ref = gold[f"{entry}.{key}"]
        assert key in ours, f"{entry}: no {key} computed"
        got = ours[key]
        assert np.shape(got) == np.shape(ref), (entry, key, np.shape(got), np.shape(ref))
        out[key] = (float(np.max(np.abs(np.asarray(got, np.float64) - ref))), rel_err(got, ref))
    return out


@pytest.mark.parametrize("entry", sorted(CASES))
def test_method_at_defaults_matches_reference(entry):
    tol = TOL_MEMORY if entry in MEMORY_ENTRIES else TOL_MGD if entry.startswith("mgd") else TOL
    errs = measured(entry)
    assert errs, entry
    if entry.startswith("mgd"):
        assert {"grad_feat", "student_part"} <= set(errs)
    bad = {k: v for k, v in errs.items() if not v[1] <= tol}
    assert not bad, f"{entry}: norm-relative errors above {tol:g}: {bad}"


@pytest.mark.parametrize("entry, over", [
    ("cirkd_pair_128", {"cirkd_pair_pool": 2}),  # the old default: pooled pairs
    ("skd_total", {"alpha": 3.0}),  # the old default alpha for every method
    ("cirkd_mem_pixel_x0.1", {"cirkd_pixel_contrast": 256}),  # the old per-class sample size
    ("hwd_readme_x3", {}),  # the released recipe is not the default (the paper form is)
])
def test_the_comparison_is_sensitive(entry, over):
    """The old defaults (or a recipe not asked for) fail the comparison by far more than rounding."""
    method = entry.split("_")[0]
    cfg = dataclasses.replace(default_config(method), **over)
    what, case = CASES[entry]
    terms = {"cirkd_pair_128": ("pair",), "cirkd_mem_pixel_x0.1": ("memory_pixel",)}.get(entry)
    feats = {"cirkd": "128", "skd": "12"}.get(method, "")
    ours = _run(cfg, feats=feats, terms=terms, prepare=_fixed_bank if method == "cirkd" else None)
    assert rel_err(ours["loss"], golden()[f"{entry}.loss"]) > 1e-3


def test_fixture_inputs_are_the_goldens_inputs():
    """The rebuilt inputs are byte-identical to the ones the goldens were computed on."""
    import json

    ref = json.loads((FIX / "inputs_sha256.json").read_text())
    fp = MAKE.fingerprints()
    assert {k: fp[k] for k in ref} == ref


def test_every_method_is_covered():
    covered = {e.split("_")[0] for e in CASES}
    assert set(METHODS) <= covered, set(METHODS) - covered


def test_reference_shapes_of_the_defaults():
    """The defaults behind the parity: no pooling in CIRKD's pairs, 2x2 in SKD's, hinge critic, MGD on
    the head feature, CIRKD's per-class sample sizes 4096 // C + 1 and 1024 // C + 1, every anchor."""
    cirkd, skd = default_config("cirkd"), default_config("skd")
    assert (cirkd.params.cirkd_pair_pool, skd.params.skd_pair_pool, skd.params.adv_loss, cirkd.params.cirkd_anchors,
            DistillConfig().alpha) == (1, 2, "hinge", 0, None)
    assert METHODS["mgd"].feature_tap == "head"
    d = make_distiller(default_config("cirkd"), 128, 256)
    assert (d.pixel_contrast, d.region_contrast) == (4096 // NUM_CLASSES + 1, 1024 // NUM_CLASSES + 1)
    student, teacher = build_model("deeplabv3_tiny_r18", 19), build_model(TEACHER, 19)
    d19 = build_distiller(default_config("cirkd"), student=student, teacher=teacher)
    assert (d19.pixel_contrast, d19.region_contrast) == (216, 54)  # Cityscapes: the reference's sizes
    mgd = build_distiller(default_config("mgd"), student=student, teacher=teacher)
    assert mgd.generator.align.in_channels == student.feature_channels["head"]
    assert mgd.generator.align.out_channels == teacher.feature_channels["head"]
    for m in ("skd", "ifvd"):
        assert build_distiller(default_config(m), student=student, teacher=teacher).adversary.loss == "hinge"
    # the paper pair (R18 student, R101 teacher): MGD's generator is the reference's 128 -> 256 one, 1.2M
    # parameters (loss.py:84-85), not 76.6M on the backbone's 512 -> 2048
    with torch.device("meta"):
        s18, t101 = build_model("deeplabv3_r18", 19), build_model("deeplabv3_r101", 19)
        paper_mgd = build_distiller(dataclasses.replace(default_config("mgd"), teacher_arch="deeplabv3_r101"),
                                    student=s18, teacher=t101)
    assert (paper_mgd.student_width, paper_mgd.teacher_width) == (128, 256)
    assert paper_mgd.describe()["trainable_params"] == 128 * 256 + 256 + 2 * (256 * 256 * 9 + 256)  # 1,213,184


@pytest.mark.parametrize("preset, dataset, entry", [
    ("released", None, "hwd_readme_x3"),  # the released command: mu 1, no N_c (default dataset Cityscapes)
    ("released", "ade20k", "hwd_readme_x3"),  # the command's flags, whatever the dataset
    ("paper", "ade20k", "hwd_paper_x3"),  # the paper's text on ADE20K: mu 0, CD / (N_c + 1)
])
def test_presets_hwd_is_the_reference_recipe(preset, dataset, entry):
    from segdistill.cli import PRESET_NAMES
    from segdistill.study.presets import PRESETS, get_preset

    assert PRESET_NAMES == PRESETS
    p = get_preset(preset, data_root="/data", dataset=dataset)
    assert p.base.optim.sync_bn and p.base.distill.alpha is None
    cfg = DistillConfig(method="hwd", teacher_arch=TEACHER, teacher_checkpoint="t.pt", params=p.params("hwd"))
    ours = _run(cfg)
    for key in ("loss", "grad_logits"):
        assert rel_err(ours[key], golden()[f"{entry}.{key}"]) <= TOL, key
    if preset == "released":
        assert p.base.run.eval_every == 400 and (dataset or p.base.data.name == "cityscapes")


def parity_table() -> list[tuple[str, str, float, float, float, float]]:
    """(entry, what, loss abs err, loss rel err, grad_logits rel err, grad_feat rel err) per entry."""
    rows = []
    for entry in sorted(CASES):
        e = measured(entry)
        nan = float("nan")
        rows.append((entry, CASES[entry][0], e["loss"][0], e["loss"][1], e.get("grad_logits", (nan, nan))[1],
                     e.get("grad_feat", (nan, nan))[1]))
    return rows


if __name__ == "__main__":  # print the parity table (markdown)
    torch.set_num_threads(1)
    print("| entry | what runs | loss abs err | loss rel err | grad logits rel err | grad feat rel err |")
    print("|---|---|---:|---:|---:|---:|")
    for entry, what, la, lr, gl, gf in parity_table():
        fmt = lambda v: "-" if v != v else f"{v:.1e}"  # noqa: E731
        print(f"| `{entry}` | {what} | {fmt(la)} | {fmt(lr)} | {fmt(gl)} | {fmt(gf)} |")
    mgd = {k: measured(k)["student_part"][1] for k in CASES if k.startswith("mgd")}
    print("\nMGD student_part rel err:", {k: f"{v:.1e}" for k, v in mgd.items()}, file=sys.stdout)
