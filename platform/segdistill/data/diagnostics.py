"""Dataset diagnostics: class frequencies, a per-pixel colour baseline, the label-resolution ceiling.

``python -m segdistill.data.diagnostics [--num-classes 24 --image-size 128 ...]`` prints them as
JSON for the synthetic dataset (or any registered dataset with ``--name``/``--root``).

- :func:`class_pixel_counts`: pixels per class (long tail: commonest / rarest ratio).
- :func:`colour_classifier_miou`: a per-pixel classifier on RGB alone (multinomial logistic
  regression on quadratic colour features, or nearest class-mean colour), trained on train
  pixels and scored on val. A benchmark where this does well is a colour test, not segmentation.
- :func:`label_ceiling`: the best mIoU reachable through logits at ``1/output_stride``
  resolution: labels brought to the logit grid, upsampled back, compared with the full-resolution
  labels ("fit": optimal logits, bilinear upsampling; "area": class fractions; "nearest"/"mode":
  hard labels on the grid).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from segdistill.config import DataConfig
from segdistill.data.registry import IGNORE_INDEX, build_datasets
from segdistill.data.transforms import nearest_indices

CEILING_METHODS = ("fit", "area", "mode", "nearest")


def _raw_pairs(dataset) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Un-augmented ``(image uint8 or float (3, H, W), label int64 (H, W))`` of a dataset or source."""
    source = getattr(dataset, "source", dataset)
    if hasattr(source, "load"):
        for i in range(len(source)):
            yield source.load(i)
    else:
        for i in range(len(dataset)):
            yield dataset[i]


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``(C, C)`` int64 counts, rows = target, cols = prediction; ignore pixels skipped."""
    valid = target != ignore_index
    idx = target[valid] * num_classes + pred[valid]
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def miou_from_confusion(conf: torch.Tensor) -> float:
    """Mean IoU over the classes that occur in the ground truth."""
    conf = conf.double()
    tp = conf.diag()
    gt, pred = conf.sum(1), conf.sum(0)
    present = gt > 0
    iou = tp[present] / (gt[present] + pred[present] - tp[present])
    return float(iou.mean()) if present.any() else float("nan")


def _one_hot(label: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """``(C, H, W)`` float one-hot; ignore pixels are all-zero."""
    valid = label != ignore_index
    oh = F.one_hot(torch.where(valid, label, 0), num_classes).permute(2, 0, 1).to(torch.float32)
    return oh * valid[None]


def _grid(h: int, w: int, output_stride: int) -> tuple[int, int]:
    """The logit grid of a ``(h, w)`` input: ``ceil(h / os) x ceil(w / os)``."""
    return math.ceil(h / output_stride), math.ceil(w / output_stride)


def ceiling_prediction(labels: torch.Tensor, num_classes: int, output_stride: int, *, method: str = "fit",
                       fit_steps: int = 30, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``labels`` int64 ``(B, H, W)`` as seen through a logit grid of ``1/output_stride``
    resolution and brought back to ``(H, W)``; returns the predicted labels ``(B, H, W)``.

    method:
      "nearest": the label at each cell's centre pixel, upsampled nearest (hard labels on the grid);
      "mode":    each cell's majority class, upsampled nearest;
      "area":    each cell's class fractions as logits, upsampled bilinearly (``align_corners=False``,
                 as the models upsample logits), argmax;
      "fit":     logits per cell optimised (Adam, ``fit_steps``) to minimise the cross-entropy of
                 their bilinear upsampling against the labels, starting from log fractions: what
                 1/os logits *can* represent, the true ceiling of an OS-``os`` model.
    """
    if method not in CEILING_METHODS:
        raise ValueError(f"method must be one of {CEILING_METHODS}, got {method!r}")
    b, h, w = labels.shape
    gh, gw = _grid(h, w, output_stride)
    if method == "nearest":
        low = labels[:, nearest_indices(h, gh)][:, :, nearest_indices(w, gw)]
        return low[:, nearest_indices(gh, h)][:, :, nearest_indices(gw, w)]
    onehot = torch.stack([_one_hot(lab, num_classes, ignore_index) for lab in labels])
    frac = F.adaptive_avg_pool2d(onehot, (gh, gw))                                # (B, C, gh, gw)
    if method == "mode":
        low = frac.argmax(1)
        return low[:, nearest_indices(gh, h)][:, :, nearest_indices(gw, w)]
    if method == "area":
        return F.interpolate(frac, size=(h, w), mode="bilinear", align_corners=False).argmax(1)
    z = torch.log(frac + 1e-2).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.3)
    for _ in range(fit_steps):
        up = F.interpolate(z, size=(h, w), mode="bilinear", align_corners=False)
        loss = F.cross_entropy(4.0 * up, labels, ignore_index=ignore_index)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return F.interpolate(z, size=(h, w), mode="bilinear", align_corners=False).argmax(1)


def label_ceiling(dataset, output_stride: int = 8, *, method: str = "fit", num_classes: int | None = None,
                  fit_steps: int = 30, batch: int = 16, ignore_index: int = IGNORE_INDEX) -> float:
    """mIoU of the labels seen through a ``1/output_stride`` logit grid (:func:`ceiling_prediction`),
    against the full-resolution labels, accumulated over ``dataset`` (a val dataset or a source;
    its un-augmented labels are used). mIoU averages the classes present in the labels.

    "fit" (default) is the resolution ceiling of a model with output stride ``output_stride`` and
    bilinear logit upsampling; "area" is a closed-form lower bound of it; "nearest"/"mode" are the
    strict hard-label readings (boundaries snapped to the grid).
    """
    if num_classes is None:
        info = getattr(dataset, "info", None)
        if info is None:
            raise ValueError("pass num_classes for a dataset without .info")
        num_classes = info.num_classes
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    pending: list[torch.Tensor] = []

    def flush() -> None:
        labels = torch.stack(pending)
        pred = ceiling_prediction(labels, num_classes, output_stride, method=method, fit_steps=fit_steps,
                                  ignore_index=ignore_index)
        conf.add_(confusion_matrix(pred, labels, num_classes, ignore_index))
        pending.clear()

    for _, label in _raw_pairs(dataset):
        label = label.to(torch.int64)
        if pending and (pending[0].shape != label.shape or len(pending) >= batch):
            flush()
        pending.append(label)
    if pending:
        flush()
    return miou_from_confusion(conf)


def class_pixel_counts(dataset, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Pixels per class over the un-augmented labels of ``dataset``: ``int64 (C,)``."""
    counts = torch.zeros(num_classes, dtype=torch.int64)
    for _, label in _raw_pairs(dataset):
        lab = label.to(torch.int64).flatten()
        counts += torch.bincount(lab[lab != ignore_index], minlength=num_classes)[:num_classes]
    return counts.numpy()


def long_tail_ratio(counts: np.ndarray) -> float:
    """Commonest / rarest pixel count over the classes that occur."""
    nz = counts[counts > 0]
    return float(nz.max() / nz.min()) if nz.size else float("nan")


def _colour_features(rgb: torch.Tensor) -> torch.Tensor:
    """``(N, 3)`` in [0, 1] -> ``(N, 10)``: 1, r, g, b and the 6 quadratic terms."""
    r, g, b = rgb.unbind(1)
    return torch.stack([torch.ones_like(r), r, g, b, r * r, g * g, b * b, r * g, r * b, g * b], 1)


def _pixels(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], ignore_index: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for image, label in pairs:
        x = image.to(torch.float32).flatten(1).T
        if image.dtype == torch.uint8:
            x = x / 255.0
        y = label.to(torch.int64).flatten()
        keep = y != ignore_index
        xs.append(x[keep])
        ys.append(y[keep])
    return torch.cat(xs), torch.cat(ys)


def colour_classifier_miou(train, val, num_classes: int, *, method: str = "logreg", max_pixels: int = 400_000,
                           steps: int = 300, seed: int = 0, ignore_index: int = IGNORE_INDEX) -> float:
    """Val mIoU of a per-pixel classifier that sees only the pixel's RGB (trained on train pixels).

    method "logreg": multinomial logistic regression on quadratic colour features, class-balanced
    (so rare classes are not ignored outright); "mean": nearest class-mean colour.
    """
    x, y = _pixels(_raw_pairs(train), ignore_index)
    gen = torch.Generator().manual_seed(seed)
    if x.shape[0] > max_pixels:
        pick = torch.randperm(x.shape[0], generator=gen)[:max_pixels]
        x, y = x[pick], y[pick]
    counts = torch.bincount(y, minlength=num_classes).to(torch.float32)
    if method == "mean":
        means = torch.zeros(num_classes, 3).index_add_(0, y, x) / counts.clamp(min=1)[:, None]
        means[counts == 0] = float("inf")

        def predict(v: torch.Tensor) -> torch.Tensor:
            return torch.cdist(v, means.nan_to_num(posinf=1e6)).argmin(1)
    elif method == "logreg":
        feats = _colour_features(x)
        mu, sd = feats[:, 1:].mean(0), feats[:, 1:].std(0).clamp(min=1e-6)
        feats[:, 1:] = (feats[:, 1:] - mu) / sd
        weight = torch.zeros(feats.shape[1], num_classes, requires_grad=True)
        class_w = (counts.sum() / counts.clamp(min=1) / num_classes).clamp(max=100.0)
        opt = torch.optim.LBFGS([weight], lr=1, max_iter=steps, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(feats @ weight, y, weight=class_w)
            loss.backward()
            return loss

        opt.step(closure)
        w = weight.detach()

        def predict(v: torch.Tensor) -> torch.Tensor:
            f = _colour_features(v)
            f[:, 1:] = (f[:, 1:] - mu) / sd
            return (f @ w).argmax(1)
    else:
        raise ValueError(f"method must be 'logreg' or 'mean', got {method!r}")
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for image, label in _raw_pairs(val):
        v, t = _pixels([(image, label)], ignore_index)
        conf += confusion_matrix(predict(v), t, num_classes, ignore_index)
    return miou_from_confusion(conf)


def report(cfg: DataConfig, *, strides: tuple[int, ...] = (8, 4)) -> dict:
    """All diagnostics for ``cfg`` as a flat dict."""
    t0, c0 = time.perf_counter(), time.process_time()
    train, val, info = build_datasets(cfg)
    out: dict = {"dataset": info.name, "num_classes": info.num_classes, "train_images": len(train),
                 "val_images": len(val), "build_s": round(time.perf_counter() - t0, 2),
                 "build_cpu_s": round(time.process_time() - c0, 2)}
    counts = class_pixel_counts(train, info.num_classes, info.ignore_index)
    freq = counts / max(counts.sum(), 1)
    order = np.argsort(-freq)
    out["longtail_ratio_train"] = round(long_tail_ratio(counts), 1)
    out["classes_absent_train"] = int((counts == 0).sum())
    val_counts = class_pixel_counts(val, info.num_classes, info.ignore_index)
    out["classes_absent_val"] = int((val_counts == 0).sum())
    out["commonest"] = [(info.class_names[i], round(float(freq[i]), 4)) for i in order[:3]]
    out["rarest"] = [(info.class_names[i], round(float(freq[i]), 5)) for i in order[-3:]]
    for method in ("logreg", "mean"):
        out[f"colour_{method}_miou"] = round(colour_classifier_miou(train, val, info.num_classes, method=method), 4)
    for os_ in strides:
        for method in CEILING_METHODS:
            out[f"ceiling_os{os_}_{method}"] = round(label_ceiling(val, os_, method=method), 4)
    out["total_s"] = round(time.perf_counter() - t0, 2)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = DataConfig()
    for f in dataclasses.fields(DataConfig):
        if f.type in ("int", "str", "float", int, str, float):
            kind = {"int": int, "str": str, "float": float}.get(f.type, f.type)
            parser.add_argument("--" + f.name.replace("_", "-"), type=kind, default=getattr(defaults, f.name))
    parser.add_argument("--strides", type=int, nargs="+", default=[8, 4])
    args = vars(parser.parse_args(argv))
    strides = tuple(args.pop("strides"))
    cfg = dataclasses.replace(defaults, **{k: v for k, v in args.items() if hasattr(defaults, k)})
    print(json.dumps(report(cfg, strides=strides), indent=1))


if __name__ == "__main__":
    main()
