"""Checks a study passes before any Ray Tune job starts, so a typo costs seconds, not a night.

:func:`preflight_spec` (no Ray) runs before ``run_study`` starts or joins Ray:

- every variant's configuration is built (``TrainConfig`` validates ranges, unknown keys, unknown
  method / model / dataset names listing the known ones) - already at ``StudySpec`` construction
  (:attr:`StudySpec.variant_configs`, built once and shared with the zoo's teacher lookup);
- the search space is not empty (``StudySpec`` rejects empty ``variants``/``grid`` lists; here an
  Optuna ``space`` function is run once on a throw-away in-memory study and must suggest a value);
- every dataset the trials use is opened and a few items per split are decoded
  (:func:`segdistill.data.validate.validate_data`: missing root, wrong layout, corrupt images,
  label ids outside the class range);
- every teacher checkpoint a variant names is loaded and checked against the config
  (architecture = ``distill.teacher_arch``, class count = the dataset's, input preprocessing = the
  one the weights were trained with; segdistill and reference-code files alike), and every
  ``model.pretrained`` backbone file is read and checked against the student (keys, shapes,
  preprocessing).

:func:`check_resources` runs once Ray is up, before the first trial: a trial that asks for more
workers, CPUs or GPUs than the cluster (or any single node, for one worker) has would otherwise
wait forever.

Every problem found is collected; :class:`PreflightError` (a :class:`ConfigError`) lists them all,
one per line, each naming the field, the value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import optuna
import torch

from ..checkpoints import BACKBONE_PREPROCESSING, check_preprocessing
from ..config import ConfigError, TrainConfig
from ..data import dataset_info
from ..data.validate import validate_data
from ..models import build_model
from ..models.weights import backbone_state
from ..train import load_teacher
from .spec import PENDING_TEACHER, StudySpec


class PreflightError(ConfigError):
    """One or more inputs of a study are invalid; the message lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"study preflight found {len(self.problems)} problem(s), nothing was started:\n{lines}")


def check_search_space(spec: StudySpec) -> list[str]:
    """An Optuna ``space`` must suggest at least one parameter (else every sample is the same run)."""
    if spec.search != "optuna" or spec.space is None:
        return []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    try:
        fixed = spec.space(trial) or {}
    except Exception as exc:  # noqa: BLE001 - report, don't crash the check
        return [f"StudySpec.space={getattr(spec.space, '__name__', spec.space)!r} raised {type(exc).__name__}: {exc}"]
    if not trial.params:
        return [f"StudySpec.space={getattr(spec.space, '__name__', spec.space)!r} suggests no parameter: the Optuna "
                "search space is empty; call trial.suggest_*() for at least one config key"]
    problems = []
    try:
        spec.config_for(spec.expand_variants()[0], spec.seeds[0], {**trial.params, **dict(fixed)})
    except ConfigError as exc:
        problems.append(f"StudySpec.space suggests an invalid config: {exc}")
    return problems


def check_data(configs: Iterable[TrainConfig], *, per_split: int = 4) -> list[str]:
    """Open every distinct dataset once and decode a few items of each split."""
    problems, seen = [], set()
    for cfg in configs:
        key = cfg.data
        if key in seen:
            continue
        seen.add(key)
        try:
            validate_data(cfg.data, per_split=per_split)
        except (ValueError, OSError) as exc:
            problems.append(str(exc))
    return problems


def check_checkpoints(configs: Iterable[TrainConfig]) -> list[str]:
    """Load each named teacher checkpoint once and compare it with what the config expects
    (architecture, class count, input preprocessing); read each ``model.pretrained`` backbone file
    and check it fits the student and its preprocessing. Every format the trainer accepts is
    accepted here (segdistill ``model.pt`` / ``state.pt``, reference-code checkpoints and backbone
    files, torchvision backbone files)."""
    problems, seen, seen_pretrained = [], set(), set()
    for cfg in configs:
        d = cfg.distill
        if cfg.model.pretrained:
            key = (cfg.model.pretrained, cfg.model.arch, tuple(getattr(cfg.data, k) for k in _PREP_FIELDS))
            if key not in seen_pretrained:
                seen_pretrained.add(key)
                problems += _check_pretrained(cfg, build_model, backbone_state, BACKBONE_PREPROCESSING,
                                              check_preprocessing)
        if d.method == "none" or d.teacher_checkpoint in ("", PENDING_TEACHER):
            continue
        num_classes = dataset_info(cfg.data).num_classes
        key = (d.teacher_checkpoint, d.teacher_arch, num_classes, tuple(getattr(cfg.data, k) for k in _PREP_FIELDS))
        if key in seen:
            continue
        seen.add(key)
        try:
            load_teacher(d.teacher_checkpoint, arch=d.teacher_arch, num_classes=num_classes,
                         device=torch.device("cpu"), data=cfg.data)
        except FileNotFoundError:
            problems.append(f"distill.teacher_checkpoint={d.teacher_checkpoint!r}: no such file (a model.pt written "
                            "by segdistill or a reference-code checkpoint, or leave it empty and give "
                            "StudySpec.teacher to train one)")
        except ConfigError as exc:  # preprocessing the teacher was not trained with
            problems.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - wrong arch/classes, corrupt or foreign file
            problems.append(f"distill.teacher_checkpoint={d.teacher_checkpoint!r} does not fit this config "
                            f"(distill.teacher_arch={d.teacher_arch!r}, data.name={cfg.data.name!r} with "
                            f"{num_classes} classes): {type(exc).__name__}: {exc}")
    return problems


_PREP_FIELDS = ("channel_order", "pixel_scale", "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b")


def _check_pretrained(cfg: TrainConfig, build_model: Any, backbone_state: Any, expected: Mapping[str, Any],
                      check_preprocessing: Any) -> list[str]:
    """Problems with ``cfg.model.pretrained``: missing, not fitting the student's backbone (checked on
    a meta-device model: nothing is allocated), or trained with other preprocessing."""
    path = cfg.model.pretrained
    if not Path(path).expanduser().exists():
        return [f"model.pretrained={path!r}: no such file (an ImageNet backbone file: the reference code's "
                "resnet18-imagenet.pth / resnet101-imagenet.pth / mobilenetv2-imagenet.pth or a torchvision state "
                "dict, a directory holding the reference files, or '' for random init)"]
    try:
        with torch.device("meta"):
            model = build_model(cfg.model.arch, 2, output_stride=cfg.model.output_stride, aux=False)
        _, fmt, file = backbone_state(model, path)
        check_preprocessing(expected[fmt], cfg.data, field="model.pretrained", value=path,
                            why=f"a {fmt}-format ImageNet backbone file ({file.name})")
    except FileNotFoundError as exc:  # a directory without the file this architecture needs
        return [f"model.pretrained={path!r}: {exc}"]
    except ConfigError as exc:
        return [str(exc)]
    except ValueError as exc:
        return [f"model.pretrained={path!r} does not fit model.arch={cfg.model.arch!r}: {exc}"]
    return []


def preflight_spec(spec: StudySpec, *, data_items: int = 4) -> None:
    """Every check that needs no Ray; raises :class:`PreflightError` listing all problems."""
    problems = check_search_space(spec)
    # one config per variant (the seed changes no dataset, model or teacher), and the zoo teachers' own
    configs = [*spec.variant_configs, *(c for c in spec.teacher_configs if c is not None)]
    problems += check_data(configs, per_split=data_items)
    problems += check_checkpoints(configs)
    if problems:
        raise PreflightError(problems)


def _fmt(x: float) -> str:
    return f"{x:g}"


def check_resources(per_worker: Mapping[str, float], num_workers: int, shape: str,
                    cluster: Mapping[str, float], nodes: Iterable[Mapping[str, Any]]) -> list[str]:
    """Problems if one trial (``num_workers`` x ``per_worker`` {"CPU", "GPU"}) can never be placed.

    ``cluster``: total resources; ``nodes``: each alive node's resources. A worker must fit on one
    node; all workers of a trial must fit in the cluster together.
    """
    problems = []
    nodes = [dict(n) for n in nodes]
    what = (f"Resources(num_workers={num_workers}, cpus={_fmt(per_worker.get('CPU', 0))}, "
            f"gpus={_fmt(per_worker.get('GPU', 0))}) with shape={shape!r}")
    for kind in ("CPU", "GPU"):
        need = float(per_worker.get(kind, 0.0))
        if need <= 0:
            continue
        total = float(cluster.get(kind, 0.0))
        largest = max((float(n.get(kind, 0.0)) for n in nodes), default=total)
        workers = num_workers if shape == "train" else 1
        if need * workers > total + 1e-9:
            knobs = f"Resources.num_workers/{kind.lower()}s" if shape == "train" else f"Resources.{kind.lower()}s"
            problems.append(f"{what}: one trial needs {_fmt(need * workers)} {kind} but the cluster has "
                            f"{_fmt(total)} {kind} in total; lower {knobs} or add nodes")
        elif need > largest + 1e-9:
            problems.append(f"{what}: one worker needs {_fmt(need)} {kind} but the largest node has "
                            f"{_fmt(largest)} {kind}; lower Resources.{kind.lower()}s")
    return problems


def check_cluster(spec: StudySpec, shape: str, cluster: Mapping[str, float]) -> None:
    """:func:`check_resources` against the Ray cluster this process is connected to (Ray imported
    here: ``segdistill.study`` and its checks before Ray import without it)."""
    import ray

    r = spec.resources
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    problems = check_resources({"CPU": r.cpus, "GPU": r.gpus}, r.num_workers, shape, cluster, nodes)
    if problems:
        raise PreflightError(problems)


__all__ = ["PreflightError", "preflight_spec", "check_search_space", "check_data", "check_checkpoints",
           "check_resources", "check_cluster"]
