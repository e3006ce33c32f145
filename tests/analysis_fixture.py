"""A small results tree in the real layout, written with the real writer (segdistill.results).

Study names, tags and the teacher copies follow what ``experiments/*.py`` and ``segdistill.study``
write: one ``<script>-demo`` directory per script, ``group``/``setting``/``role`` tags, the zoo
teacher copied into every study under the same trial id, ``optuna.journal`` for the search.
The numbers are chosen so tests can hand-compute every table entry (see ``tests/test_analysis.py``).

    python tests/analysis_fixture.py OUT_DIR     # write the tree (for notebooks / manual checks)
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import numpy as np

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from segdistill.config import TrainConfig, known_methods  # noqa: E402
from segdistill.results import Embeddings, TrialRecord, write_trial  # noqa: E402

# class name -> validation pixel count; "ring" never occurs (IoU undefined, must be left out)
CLASSES = {"road": 9000, "building": 5000, "sidewalk": 3000, "wall": 800, "truck": 400, "pole": 200, "ring": 0}
BASE = TrainConfig().replace(**{"data.name": "cityscapes", "model.arch": "deeplabv3_r18"})
HWD_PARAMS = {"distill.beta": 0.1, "distill.mu": 0.0}  # what every HWD row starts from
TEACHER_ID = "teacher-deeplabv3_r101-cityscapes-0123456789ab"
TEACHER_ADE_ID = "teacher-deeplabv3_r101-ade20k-0123456789ab"
TEACHER_KW = {"distill.teacher_arch": "deeplabv3_r101", "distill.teacher_checkpoint": "zoo/model.pt"}

# compare_methods: (dataset, student) -> method -> mIoU of seed 0; seed s adds SEED_STEP[method] * s
COMPARE = {
    ("cityscapes", "deeplabv3_r18"): {"none": 0.600, "kd": 0.610, "cwd": 0.650, "hwd": 0.700, "mynew": 0.620},
    ("cityscapes", "pspnet_r18"): {"none": 0.580, "cwd": 0.640, "hwd": 0.630},
    ("ade20k", "deeplabv3_r18"): {"none": 0.300, "cwd": 0.330, "hwd": 0.340},
    ("ade20k", "pspnet_r18"): {"none": 0.310, "cwd": 0.335, "hwd": 0.345},
}
SEED_STEP = {"none": 0.002, "kd": 0.004, "cwd": 0.006, "hwd": 0.010, "mynew": 0.0}
TEACHER_MIOU = {"cityscapes": 0.80, "ade20k": 0.42}
SEEDS = (0, 1, 2)

# class_analysis: per-class IoU of seed 0 per method; seed s adds 0.02 * s (teacher: one run)
CLASS_IOU = {
    "baseline": {"road": 0.90, "building": 0.70, "sidewalk": 0.60, "wall": 0.30, "truck": 0.20, "pole": 0.10},
    "CWD": {"road": 0.92, "building": 0.75, "sidewalk": 0.64, "wall": 0.25, "truck": 0.15, "pole": 0.20},
    "HWD": {"road": 0.92, "building": 0.76, "sidewalk": 0.66, "wall": 0.35, "truck": 0.30, "pole": 0.26},
    "teacher": {"road": 0.95, "building": 0.85, "sidewalk": 0.75, "wall": 0.50, "truck": 0.55, "pole": 0.40},
}
CLASS_SEEDS = (0, 1)
# TD and NTD of class k (0-based) in seed s: TD = (k + 1) * (1 + s), NTD = 0.5 (+ 0.5 * s)
BETAS = {0.01: 0.69, 0.1: 0.70, 0.5: 0.66, 0.9: 0.62}       # seed 0; seed 1 adds 0.01
TAU_PRIMES = {2.0: 0.61, 5.0: 0.64}                           # one seed
CWD_REF = {"ablation_beta": (0.650, 0.660), "ablation_mu": (0.640,), "ablation_pixel_correction": (0.655, 0.665)}
MUS = {-1.0: 0.60, 0.0: 0.70, 1.0: 0.67}                      # one seed
PIXEL = {("n", 0.0): 0.70, ("none", 0.0): 0.68, ("n", 1.0): 0.66, ("none", 1.0): 0.67}  # seed 1 adds 0.004
SEARCH_VALUES = (0.55, 0.60, 0.58, 0.66, 0.99, 0.62, 0.64, 0.65)  # Optuna objective (0.99: search, never Table II)


def _names() -> list[str]:
    return list(CLASSES)


def _per_class(iou: dict[str, float] | None, seed: int, *, td: bool) -> list[dict]:
    rows = []
    for k, (name, pixels) in enumerate(CLASSES.items()):
        present = pixels > 0
        value = (iou.get(name, 0.5) + 0.02 * seed) if (iou is not None and present) else (0.5 if present else np.nan)
        rows.append(dict(class_id=k, class_name=name, iou=value, acc=0.9 if present else np.nan, pixels=float(pixels),
                         present=present, td=(k + 1) * (1 + seed) if (td and present) else np.nan,
                         ntd=0.5 + 0.5 * seed if td else np.nan))
    return rows


def record(study: str, tid: str, flat: dict, miou: float, *, role: str = "student", group: str | None = None,
           setting: str | None = None, seed: int = 0, iou: dict | None = None, extras: bool = False,
           status: str = "completed", params: float = 13.6e6, flops: float = 86.0e9) -> TrialRecord:
    rng = np.random.default_rng(zlib.crc32(tid.encode()))
    method = flat["distill.method"]
    distilled = role == "student" and method != "none"
    curves = [{"iteration": it, "loss/total": 2.0 / it + 0.01 * seed, "loss/ce": 1.0 / it, "lr": 0.01 * (1 - it / 40),
               **({"loss/distill": 1.0 / it} if distilled else {})} for it in (10, 20, 30, 40)]
    curves += [{"iteration": 20, "val/miou": miou - 0.05}, {"iteration": 30, "val/miou": miou},
               {"iteration": 40, "val/miou": miou}]  # the last 2 evaluations: last_evals_miou == miou
    metrics = {"last_evals_miou": miou, "final_miou": miou, "best_miou": miou + 0.01, "pixel_acc": 0.9, "params": params, "flops": flops,
               "role": role, "device": "cpu", "git_sha": "abc", "preset": "demo", "iterations_done": 40}
    if group:
        metrics["group"] = group
    if setting:
        metrics["setting"] = setting
    emb = samples = None
    if extras:
        labels = np.repeat(np.arange(6), 15)
        emb = Embeddings(features=rng.normal(size=(len(labels), 8)) + 3 * np.eye(8)[labels], labels=labels)
        lab = np.repeat(np.arange(6), 20).reshape(12, 10)
        img = (rng.integers(0, 255, size=(12, 10, 3))).astype(np.uint8)
        samples = [dict(index=k, image=img, label=lab, prediction=np.where(rng.random(lab.shape) < 0.2, 0, lab))
                   for k in range(2)]
    return TrialRecord(study=study, trial_id=tid, status=status, config=flat, metrics=metrics,
                       per_class=_per_class(iou, seed, td=distilled), curves=curves, embeddings=emb, samples=samples)


def _flat(**over) -> dict:
    """A row's config: the method's own parameters only, as the writers store them. A method this
    checkout does not register (tables must cope) gets the shared fields of a 'none' config."""
    method = over.pop("distill.method", "none")
    extra = TEACHER_KW if method != "none" else {}
    if method in known_methods() and method != "none":
        extra = {**extra, "distill.method": method, **(HWD_PARAMS if method == "hwd" else {})}
    flat = BASE.replace(**{**extra, **over}).to_flat()
    flat["distill.method"] = method
    return flat


def _teacher(root: Path, study: str, dataset: str = "cityscapes") -> None:
    flat = BASE.replace(**{"model.arch": "deeplabv3_r101", "data.name": dataset}).to_flat()
    tid = TEACHER_ID if dataset == "cityscapes" else TEACHER_ADE_ID
    write_trial(root, record(study, tid, flat, TEACHER_MIOU[dataset], role="teacher", iou=CLASS_IOU["teacher"],
                             params=61.1e6, flops=384.7e9))


def write_compare(root: Path) -> None:
    study = "compare_methods-demo"
    for (dataset, student), methods in COMPARE.items():
        for method, m0 in methods.items():
            for s in SEEDS:
                flat = _flat(**{"distill.method": method, "data.name": dataset, "model.arch": student, "run.seed": s})
                write_trial(root, record(study, f"cmp_{dataset}_{student}_{method}_s{s}", flat,
                                         m0 + SEED_STEP[method] * s, group="comparison", setting=f"{student}/{method}",
                                         seed=s, params=13.6e6 if student == "deeplabv3_r18" else 12.9e6,
                                         flops=86.0e9 if student == "deeplabv3_r18" else 67.6e9))
    # a failed and an early-stopped trial: never in the tables
    for status in ("failed", "early_stopped"):
        flat = _flat(**{"distill.method": "hwd", "run.seed": 9})
        write_trial(root, record(study, f"cmp_{status}", flat, 0.95, group="comparison", status=status))
    for dataset in ("cityscapes", "ade20k"):
        _teacher(root, study, dataset)


def write_class_analysis(root: Path) -> None:
    study = "class_analysis-demo"
    for label, method in (("baseline", "none"), ("CWD", "cwd"), ("HWD", "hwd")):
        for s in CLASS_SEEDS:
            flat = _flat(**{"distill.method": method, "run.seed": s, "run.embedding_pixels": 90, "run.sample_images": 2})
            write_trial(root, record(study, f"cls_{method}_s{s}", flat, 0.6 + 0.01 * s, group="class_analysis",
                                     setting=method, seed=s, iou=CLASS_IOU[label], extras=s == 0))
    _teacher(root, study)


def write_ablations(root: Path) -> None:
    hwd = {"distill.method": "hwd", "distill.weighting": "smooth", "distill.mu": 0.0}
    study = "ablation_beta-demo"
    for beta, m in BETAS.items():
        for s in (0, 1):
            write_trial(root, record(study, f"beta_{beta}_s{s}", _flat(**hwd, **{"distill.beta": beta, "run.seed": s}),
                                     m + 0.01 * s, group="beta", setting=f"beta={beta:g}", seed=s))
    for tp, m in TAU_PRIMES.items():
        flat = _flat(**{**hwd, "distill.weighting": "softmax", "distill.tau_prime": tp})
        write_trial(root, record(study, f"soft_{tp}", flat, m, group="softmax", setting=f"tau'={tp:g}"))
    study = "ablation_mu-demo"
    for mu, m in MUS.items():
        write_trial(root, record(study, f"mu_{mu}", _flat(**{**hwd, "distill.mu": mu}), m, group="mu",
                                 setting=f"mu={mu:g}"))
    study = "ablation_pixel_correction-demo"
    for (pc, mu), m in PIXEL.items():
        for s in (0, 1):
            flat = _flat(**{**hwd, "distill.pixel_correction": pc, "distill.mu": mu, "run.seed": s})
            write_trial(root, record(study, f"pc_{pc}_{mu}_s{s}", flat, m + 0.004 * s, group="pixel_correction",
                                     setting=f"{pc} mu={mu:g}", seed=s))
    for script, values in CWD_REF.items():
        for s, m in enumerate(values):
            write_trial(root, record(f"{script}-demo", f"{script}_cwdref_s{s}",
                                     _flat(**{"distill.method": "cwd", "run.seed": s}), m, group="cwd_ref",
                                     setting="cwd", seed=s))
        _teacher(root, f"{script}-demo")


def write_search(root: Path) -> None:
    """Optuna journal (as ResumableOptunaSearch leaves it) plus the Parquet records of the trials."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study_name = "search_hwd-demo"
    (root / study_name).mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(root / study_name / "optuna.journal")))
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize")
    dists = {"distill.mu": optuna.distributions.FloatDistribution(-2.0, 2.0),
             "distill.alpha": optuna.distributions.FloatDistribution(0.1, 5.0, log=True),
             "distill.weighting": optuna.distributions.CategoricalDistribution(["smooth", "softmax"]),
             "distill.beta": optuna.distributions.FloatDistribution(0.01, 0.9, log=True)}
    for i, value in enumerate(SEARCH_VALUES):
        params = {"distill.mu": -1.5 + 0.4 * i, "distill.alpha": 0.2 + 0.5 * i, "distill.weighting": "smooth",
                  "distill.beta": 0.02 + 0.1 * i}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value,
                                                  intermediate_values={1: value - 0.05, 2: value}))
        flat = _flat(**{"distill.method": "hwd", **{k: v for k, v in params.items()}})
        write_trial(root, record(study_name, f"search{i:02d}", flat, value, group="search",
                                 status="completed" if i % 3 else "early_stopped"))
    _teacher(root, study_name)


def build_tree(root: Path, *, parts: tuple[str, ...] = ("compare", "class", "ablations", "search")) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    writers = {"compare": write_compare, "class": write_class_analysis, "ablations": write_ablations,
               "search": write_search}
    for p in parts:
        writers[p](root)
    return root


if __name__ == "__main__":
    build_tree(Path(sys.argv[1]))
    print(f"wrote {sys.argv[1]}")
