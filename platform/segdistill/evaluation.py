"""Evaluating a run's student: whole validation images, logits upsampled bilinearly
(``model.eval_align_corners``; the reference code uses True, docs/REFERENCE.md "Evaluation"), the
confusion matrix (mIoU by the mmseg convention, :mod:`segdistill.metrics`) and, with a teacher, the
TD/NTD divergence per class (the teacher's validation logits computed once, then read back:
``runstate.ValTeacherLogits``); sharded over ranks and all-reduced. Also the opt-in figure data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .data import preprocessing_of
from .metrics import ConfusionMatrix, EvalAccumulators, TDNTDMeter, per_class_rows
from .runstate import RunState, mix_seed

# temperature of the TD/NTD activation maps for methods without a ``tau`` of their own (CWD and HWD
# measure at theirs): the paper's 4
DIVERGENCE_TAU = 4.0


def upsample_logits(logits: Tensor, size: Sequence[int], *, align_corners: bool = False) -> Tensor:
    """Bilinear upsampling of logits (B, C, h, w) to ``size`` (H, W): the evaluation path."""
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=align_corners)


@torch.no_grad()
def evaluate(run: RunState) -> dict[str, Any]:
    """``{"conf": confusion summary, "div": TD/NTD summary or None, "per_class": rows}`` of the
    student on the validation split (this rank's share, all-reduced)."""
    cfg, place = run.cfg, run.place
    run.student.eval()
    teacher = run.teacher
    acc = EvalAccumulators(
        ConfusionMatrix(run.num_classes, run.ignore_index, run.device),
        TDNTDMeter(run.num_classes, getattr(cfg.distill.params, "tau", DIVERGENCE_TAU), run.ignore_index, run.device)
        if teacher is not None else None,
    )
    indices = list(range(place.rank, len(run.val_ds), place.world))
    batch = cfg.optim.batch_size if run.inputs.info.val_batchable else 1
    for start in range(0, len(indices), batch):
        chunk = tuple(indices[start:start + batch])
        items = [run.val_ds[i] for i in chunk]
        images = torch.stack([x for x, _ in items]).to(run.device, memory_format=place.memory_format)
        labels = torch.stack([y for _, y in items]).to(run.device)
        with run.autocast():
            s_logits = run.student(images).logits
            t_logits = (run.inputs.val_teacher_logits.get(chunk, lambda: teacher(images).logits)
                        if teacher is not None else None)
        pred = upsample_logits(s_logits.float(), labels.shape[-2:], align_corners=cfg.model.eval_align_corners).argmax(1)
        acc.confusion.update(pred, labels)
        if acc.divergence is not None and t_logits is not None:
            acc.divergence.update(s_logits.float(), t_logits.float(), labels)
    if place.world > 1:
        for t in acc.state_tensors():
            dist.all_reduce(t)
    conf = acc.confusion.compute()
    div = acc.divergence.compute() if acc.divergence is not None else None
    return {"conf": conf, "div": div, "per_class": per_class_rows(conf, div, run.inputs.info.class_names)}


@torch.no_grad()
def collect_extras(run: RunState) -> tuple[dict[str, np.ndarray] | None, list[dict[str, np.ndarray]] | None]:
    """Opt-in figure data: sampled per-pixel "head" features with their labels (t-SNE, paper
    Fig. 5) and a few validation predictions (Fig. 4). Deterministic in ``run.seed``."""
    cfg = run.cfg
    n_pix, n_img = cfg.run.embedding_pixels, cfg.run.sample_images
    if not n_pix and not n_img:
        return None, None
    run.student.eval()
    feats, labs, samples = [], [], []
    n_sources = min(len(run.val_ds), max(n_img, 8 if n_pix else 0))
    prep = preprocessing_of(cfg.data)  # figures show the RGB image, whatever the model's input convention
    for i in range(n_sources):
        image, label = run.val_ds[i]
        with run.autocast():
            out = run.student(image[None].to(run.device, memory_format=run.place.memory_format))
        if n_pix:
            f = out.features["head"].float()[0]  # (D, h, w)
            small = F.interpolate(label[None, None].float(), size=f.shape[-2:], mode="nearest")[0, 0].long()
            valid = (small != run.ignore_index) & (small < run.num_classes)
            feats.append(f.permute(1, 2, 0)[valid.to(f.device)].cpu())  # (n_valid, D)
            labs.append(small[valid])
        if i < n_img:
            pred = upsample_logits(out.logits.float(), label.shape[-2:],
                                   align_corners=cfg.model.eval_align_corners).argmax(1)[0].cpu()
            rgb = prep.invert(image).permute(1, 2, 0)  # (H, W, 3) uint8
            samples.append({"image": rgb.numpy(), "label": label.numpy().astype(np.int16),
                            "prediction": pred.numpy().astype(np.int16)})
    embeddings = None
    if n_pix and feats:
        all_f, all_l = torch.cat(feats), torch.cat(labs)
        g = torch.Generator().manual_seed(mix_seed(cfg.run.seed, 3))
        pick = torch.randperm(len(all_l), generator=g)[:n_pix]
        embeddings = {"features": all_f[pick].numpy(), "labels": all_l[pick].numpy()}
    return embeddings, (samples or None)
