"""Segmentation metrics: confusion-matrix mIoU, per-class IoU and accuracy, pixel accuracy, and the
paper's TD/NTD statistics (Sec. III-C.1, Table I).

mIoU follows the field's convention (mmseg's ``mean_iou``, torchmetrics' ``MulticlassJaccardIndex``
without absent-class exclusion): IoU_c = TP / (TP + FP + FN) for every class whose union is non-empty,
mean over those classes (a class predicted but absent from the labels scores 0; a class neither
predicted nor labelled is NaN and left out). ``miou_all_classes`` is the reference code's average
(``utils/score.py:56-57``: IoU over *all* C classes, an empty union counting 0), which its published
numbers used; on COCO-Stuff it averages over 182 ids of which 171 occur. ``present`` (the class
occurs in the labels) is reported per class; accuracy is defined only for present classes.
Accumulators hold sums, so results over a sharded evaluation are exact after ``all_reduce`` of
:meth:`state_tensors`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .losses.hwd import downsample_labels


class ConfusionMatrix:
    """Accumulates a (C, C) confusion matrix: rows = ground truth, columns = prediction."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """pred, target: (B, H, W) integer maps of the same shape."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        c = self.num_classes
        valid = (target >= 0) & (target < c) & (target != self.ignore_index)
        idx = target[valid].long() * c + pred[valid].long()
        self.matrix += torch.bincount(idx, minlength=c * c).reshape(c, c).to(self.matrix)

    def compute(self) -> dict[str, object]:
        m = self.matrix.double().cpu()
        tp = m.diag()
        gt = m.sum(1)  # pixels per ground-truth class
        pred = m.sum(0)
        union = gt + pred - tp
        present = gt > 0
        counted = union > 0  # mmseg: NaN (left out of the mean) only when nothing was labelled or predicted
        iou = torch.where(counted, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        acc = torch.where(present, tp / gt.clamp(min=1), torch.full_like(tp, float("nan")))
        total = m.sum()
        return {
            "miou": float(iou[counted].mean()) if counted.any() else float("nan"),
            # the reference code's (utils/score.py:56-57): all C classes, an empty union scores 0
            "miou_all_classes": float((tp / union.clamp(min=1)).mean()) if total > 0 else float("nan"),
            "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
            "mean_acc": float(acc[present].mean()) if present.any() else float("nan"),
            "iou": iou.tolist(),
            "acc": acc.tolist(),
            "pixels": gt.long().tolist(),
            "present": present.tolist(),
            "classes_present": int(present.sum()),
            "classes_evaluated": int(counted.sum()),
        }


class TDNTDMeter:
    """Target / non-target divergence per class (paper Sec. III-C.1, Table I).

    With activation maps p = softmax over positions of z / tau (per channel, at the logit
    resolution), ``TD_c`` is the mean of (pT_c - pS_c)^2 over pixels labelled c and ``NTD_c`` the same
    over valid pixels with other labels; sums and counts accumulate over the whole evaluation set.
    """

    def __init__(self, num_classes: int, tau: float = 4.0, ignore_index: int = 255, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.tau = tau
        self.ignore_index = ignore_index
        self.sq_sum_total = torch.zeros(num_classes, dtype=torch.float64, device=device)  # sum over valid pixels
        self.sq_sum_target = torch.zeros(num_classes, dtype=torch.float64, device=device)  # sum over pixels of class c
        self.n_valid = torch.zeros((), dtype=torch.float64, device=device)
        self.n_target = torch.zeros(num_classes, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> None:
        """student_logits, teacher_logits: (B, C, h, w); labels (B, H, W) at input resolution."""
        b, c, h, w = student_logits.shape
        ps = F.softmax(student_logits.float().reshape(b, c, -1) / self.tau, dim=-1)  # (B, C, hw)
        pt = F.softmax(teacher_logits.float().reshape(b, c, -1) / self.tau, dim=-1)
        sq = ((pt - ps) ** 2).double()  # (B, C, hw)
        small = downsample_labels(labels, (h, w)).reshape(b, -1)  # (B, hw)
        valid = (small >= 0) & (small < c) & (small != self.ignore_index)  # (B, hw)
        onehot = F.one_hot(torch.where(valid, small, torch.zeros_like(small)), c).double()  # (B, hw, C)
        onehot = onehot * valid[..., None]
        self.sq_sum_total += (sq * valid[:, None]).sum(dim=(0, 2))
        self.sq_sum_target += torch.einsum("bcp,bpc->c", sq, onehot)
        self.n_valid += valid.sum()
        self.n_target += onehot.sum(dim=(0, 1))

    def compute(self) -> dict[str, list[float]]:
        n_other = self.n_valid - self.n_target
        td = torch.where(self.n_target > 0, self.sq_sum_target / self.n_target.clamp(min=1), torch.full_like(self.n_target, float("nan")))
        ntd = torch.where(n_other > 0, (self.sq_sum_total - self.sq_sum_target) / n_other.clamp(min=1), torch.full_like(n_other, float("nan")))
        return {"td": td.cpu().tolist(), "ntd": ntd.cpu().tolist()}


@dataclass
class EvalAccumulators:
    """Everything evaluation sums up; ``state_tensors`` lists the tensors to all_reduce."""

    confusion: ConfusionMatrix
    divergence: TDNTDMeter | None

    def state_tensors(self) -> list[Tensor]:
        out = [self.confusion.matrix]
        if self.divergence is not None:
            d = self.divergence
            out += [d.sq_sum_total, d.sq_sum_target, d.n_valid, d.n_target]
        return out


def per_class_rows(conf: dict[str, object], div: dict[str, list[float]] | None, class_names: tuple[str, ...]) -> list[dict[str, object]]:
    """One dict per class: class_id, class_name, iou, acc, pixels, present, td, ntd."""
    rows = []
    for k, name in enumerate(class_names):
        td = div["td"][k] if div else float("nan")
        ntd = div["ntd"][k] if div else float("nan")
        rows.append({
            "class_id": k, "class_name": name, "iou": conf["iou"][k], "acc": conf["acc"][k],  # type: ignore[index]
            "pixels": conf["pixels"][k], "present": conf["present"][k], "td": td, "ntd": ntd,  # type: ignore[index]
        })
    return rows
