"""Model files in: segdistill's own and the reference code's, detected by their content.

Three formats hold a whole segmentation model (docs/REFERENCE.md "Checkpoint files"):

| format | what | written by |
|---|---|---|
| ``segdistill-model`` | ``{"format": "segdistill-model-v1", "arch", "num_classes", "config", "state_dict", ...}`` | ``train.save_model_artifact`` (``model.pt``) |
| ``segdistill-checkpoint`` | ``{"config", "num_classes", "model", "optimizer", ...}`` | the trainer (``checkpoint/state.pt``) |
| ``reference`` | a bare state dict with ``pretrained.*``, ``head.*`` (and ``auxlayer.*``) keys | the reference code (``torch.save(model.state_dict())``, e.g. ``deeplabv3_resnet101_citys_best_model.pth``) |

:func:`read_model_file` reads any of them into a :class:`ModelFile` (format, architecture when the
file names it, class count, the weights under segdistill's keys when the architecture is known, and
the image preprocessing the weights expect); :func:`load_model` builds the network and loads it,
checking everything before any weight is copied (never a partial load). A reference file does not
name its architecture: the caller gives it (``distill.teacher_arch``), and a file that does not fit
gets an error naming the first keys and shapes that differ and the paper models it would fit.
The aux head's weights are dropped when the model is built without it (a teacher); a model built
with it needs them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import IMAGENET_PREPROCESSING, PREPROCESSING_KEYS, REFERENCE_PREPROCESSING, ConfigError, DataConfig
from .data import Preprocessing, preprocessing_of
from .models import build_model
from .models.reference import REFERENCE_MODELS, looks_like_reference, reference_key_map, reference_num_classes
from .models.weights import WeightsError, as_state_dict, check_fit, read_weights_file

MODEL_FORMAT = "segdistill-model-v1"
FORMATS = ("segdistill-model", "segdistill-checkpoint", "reference")
# what each kind of ImageNet backbone file expects (segdistill.models.weights.backbone_state's format)
BACKBONE_PREPROCESSING: dict[str, dict[str, Any]] = {"reference": REFERENCE_PREPROCESSING,
                                                     "torchvision": IMAGENET_PREPROCESSING}


class CheckpointError(WeightsError):
    """A model file that cannot serve as asked (wrong architecture or class count, unreadable,
    foreign keys); the message names the file."""


@dataclass(frozen=True)
class ModelFile:
    """What a model file holds.

    ``arch``: the segdistill architecture, or None for a reference file (it does not say).
    ``state``: the weights as stored (reference keys for a reference file). ``has_aux``: the file
    holds aux-head weights. ``preprocessing``: the flat ``data.*`` preprocessing fields the weights
    were trained with (:data:`segdistill.config.PREPROCESSING_KEYS`). ``config``: segdistill's flat
    training config, if the file has one.
    """

    path: Path
    format: str
    arch: str | None
    num_classes: int
    output_stride: int
    has_aux: bool
    state: dict[str, Tensor]
    preprocessing: dict[str, Any]
    config: dict[str, Any] | None = None


def _preprocessing_of_flat(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The preprocessing fields of a flat config; keys it lacks (files written before they existed)
    take the defaults those files were trained with."""
    return {k: flat.get(k, IMAGENET_PREPROCESSING[k]) for k in PREPROCESSING_KEYS}


def read_model_file(path: str | PathLike[str]) -> ModelFile:
    """Read a segdistill ``model.pt`` / ``state.pt`` or a reference segmentation checkpoint.

    Raises FileNotFoundError, or :class:`CheckpointError` / ``WeightsError`` for an unreadable,
    truncated or foreign file (naming it and what it holds instead)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"model file not found: {file}")
    payload = read_weights_file(file, trusted_pickle=True)
    if isinstance(payload, Mapping) and payload.get("format") == MODEL_FORMAT:
        state = as_state_dict(payload["state_dict"], file)
        flat = dict(payload.get("config") or {})
        return ModelFile(file, "segdistill-model", str(payload["arch"]), int(payload["num_classes"]),
                         int(payload.get("output_stride", 8)), any(k.startswith("aux_head.") for k in state),
                         state, _preprocessing_of_flat(flat), flat or None)
    if isinstance(payload, Mapping) and "model" in payload and "config" in payload:
        flat = dict(payload["config"])
        state = as_state_dict(payload["model"], file)
        return ModelFile(file, "segdistill-checkpoint", str(flat["model.arch"]), int(payload["num_classes"]),
                         int(flat.get("model.output_stride", 8)), any(k.startswith("aux_head.") for k in state),
                         state, _preprocessing_of_flat(flat), flat)
    state = as_state_dict(payload, file)
    if looks_like_reference(state):
        num_classes = reference_num_classes(state)
        if num_classes is None:
            raise CheckpointError(f"{file} has reference-code keys (pretrained.*, head.*) but no classifier "
                                  "(head.block.4.bias or head.classifier.bias): a truncated or edited state dict?")
        return ModelFile(file, "reference", None, num_classes, 8, any(k.startswith("auxlayer.") for k in state),
                         state, dict(REFERENCE_PREPROCESSING))
    first = ", ".join(list(state)[:3])
    raise CheckpointError(f"{file} is neither a segdistill model file (model.pt / state.pt) nor a reference-code "
                          f"segmentation checkpoint (keys pretrained.*, head.*, auxlayer.*); its keys start {first}")


def _fits(arch: str, state: Mapping[str, Tensor], num_classes: int, has_aux: bool) -> bool:
    with torch.device("meta"):
        model = build_model(arch, num_classes, aux=has_aux)
    mapping = reference_key_map(model)
    expected = {mapping[k]: v for k, v in model.state_dict().items()}
    return set(expected) == set(state) and all(state[k].shape == v.shape for k, v in expected.items())


def identify_reference_arch(state: Mapping[str, Tensor]) -> list[str]:
    """The paper models a reference state dict fits exactly (usually one, or none)."""
    num_classes = reference_num_classes(state)
    if num_classes is None:
        return []
    has_aux = any(k.startswith("auxlayer.") for k in state)
    return [a for a in sorted(REFERENCE_MODELS) if _fits(a, state, num_classes, has_aux)]


def reference_state_for(model: nn.Module, file: ModelFile) -> dict[str, Tensor]:
    """A reference file's weights under ``model``'s keys, checked against it (keys and shapes);
    the file's aux head is dropped when ``model`` has none. Raises :class:`CheckpointError`."""
    arch = model.arch
    if arch not in REFERENCE_MODELS:
        raise CheckpointError(f"{file.path} is a reference-code checkpoint, but {arch} has no reference-code "
                              f"counterpart; it can load into {sorted(REFERENCE_MODELS)}")
    mapping = reference_key_map(model)  # ours -> reference
    state = file.state
    if model.aux_head is None:
        state = {k: v for k, v in state.items() if not k.startswith("auxlayer.")}
    expected = {mapping[k]: v for k, v in model.state_dict().items()}
    try:
        check_fit(expected, state, file=file.path, target=f"{arch} (the reference's {_reference_name(arch)})")
    except WeightsError as exc:
        fits = identify_reference_arch(file.state)
        hint = f" It fits {', '.join(fits)} (with {file.num_classes} classes)." if fits else ""
        raise CheckpointError(f"{exc}.{hint}") from None
    back = {v: k for k, v in mapping.items()}
    return {back[k]: v for k, v in state.items()}


def _reference_name(arch: str) -> str:
    model, backbone = REFERENCE_MODELS[arch]
    return f"--model {model} --backbone {backbone}"


def load_model(path: str | PathLike[str] | ModelFile, *, arch: str | None = None, num_classes: int | None = None,
               aux: bool = False, output_stride: int | None = None) -> tuple[nn.Module, ModelFile]:
    """Build the model a file holds and load its weights (strictly; nothing is loaded unless all fit).

    ``arch`` / ``num_classes``: what the caller expects (a mismatch raises ValueError naming both;
    the messages keep the teacher wording of docs/ERRORS.md); a reference file needs ``arch``. ``aux``: build the aux head too (its weights must
    then be in the file); without it the file's aux weights are dropped. Returns ``(model on the
    CPU in train mode, the ModelFile)``."""
    file = path if isinstance(path, ModelFile) else read_model_file(path)
    if file.format == "reference":
        if arch is None:
            fits = identify_reference_arch(file.state)
            raise CheckpointError(f"{file.path} is a reference-code checkpoint, which does not name its architecture; "
                                  f"give it (e.g. distill.teacher_arch / --arch){': it fits ' + ', '.join(fits) if fits else ''}")
        t_arch = arch
    else:
        t_arch = str(file.arch)
        if arch is not None and t_arch != arch:
            raise ValueError(f"teacher checkpoint {file.path} holds architecture {t_arch!r}, but distill.teacher_arch is {arch!r}")
    if num_classes is not None and file.num_classes != num_classes:
        raise ValueError(f"teacher checkpoint {file.path} predicts {file.num_classes} classes, but the dataset has "
                         f"{num_classes}")
    if aux and not file.has_aux:
        aux = False  # the file has none (e.g. MobileNetV2 models): build without it
    model = build_model(t_arch, file.num_classes, output_stride=output_stride or file.output_stride, aux=aux)
    if file.format == "reference":
        state = reference_state_for(model, file)
    else:
        state = dict(file.state)
        if model.aux_head is None:
            state = {k: v for k, v in state.items() if not k.startswith("aux_head.")}
        check_fit(model.state_dict(), state, file=file.path, target=t_arch)
    model.load_state_dict(state, strict=False)  # checked above: only num_batches_tracked may be absent
    return model, file


def check_preprocessing(expected: Mapping[str, Any], data: DataConfig, *, field: str, value: str, why: str) -> None:
    """Raise :class:`ConfigError` unless ``data``'s preprocessing fields equal ``expected`` (what the
    weights of ``field=value`` were trained with; ``why`` says which weights these are). The message
    names every differing field and gives the ``--set`` overrides that fix it."""
    have = {k: getattr(data, k.split(".", 1)[1]) for k in PREPROCESSING_KEYS}
    diff = {k: (have[k], expected[k]) for k in PREPROCESSING_KEYS if have[k] != expected[k]}
    if not diff:
        return
    wrong = ", ".join(f"{k}={a!r} (needs {b!r})" for k, (a, b) in diff.items())
    fix = " ".join(f"{k}={b}" for k, (_, b) in diff.items())
    raise ConfigError(f"{field}={value!r} is {why}: its weights expect other input preprocessing than this config "
                      f"gives: {wrong}; set {fix}")


def preprocessing_of_file(file: ModelFile) -> Preprocessing:
    """The input preprocessing a model file's weights expect."""
    return preprocessing_of(DataConfig(**{k.split(".", 1)[1]: v for k, v in file.preprocessing.items()}))


def eval_align_corners_of_file(file: ModelFile) -> bool:
    """The evaluation upsampling a model file was trained with (True for reference files, whose code
    always uses align_corners=True; the training config's ``model.eval_align_corners`` otherwise)."""
    if file.format == "reference":
        return True
    return bool((file.config or {}).get("model.eval_align_corners", False))


def describe_format(file: ModelFile) -> str:
    """A phrase for messages: what kind of model file this is."""
    return {"reference": "a reference-code checkpoint (BGR input minus the Caffe means, no std)",
            "segdistill-model": "a segdistill model file", "segdistill-checkpoint": "a segdistill training checkpoint",
            }[file.format]


__all__ = ["BACKBONE_PREPROCESSING", "CheckpointError", "FORMATS", "MODEL_FORMAT", "ModelFile", "check_preprocessing",
           "describe_format", "eval_align_corners_of_file", "identify_reference_arch", "preprocessing_of_file", "load_model", "read_model_file", "reference_state_for"]
