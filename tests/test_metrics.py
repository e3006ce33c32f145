"""Metrics: confusion-matrix mIoU (mmseg convention), the reference's all-classes mIoU, pixel accuracy, TD/NTD."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segdistill.metrics import ConfusionMatrix, TDNTDMeter, per_class_rows


def test_confusion_miou_counts_predicted_but_absent_classes():
    cm = ConfusionMatrix(5)
    target = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 255]]])
    pred = torch.tensor([[[0, 1, 1, 1], [0, 0, 3, 2]]])
    cm.update(pred, target)
    out = cm.compute()
    # class 0: tp 3, gt 4, pred 3 -> 3/4; class 1: tp 2, gt 3, pred 3 -> 2/4; class 3 absent from gt but
    # predicted once -> IoU 0 (mmseg); class 2 predicted only on the ignore pixel and class 4 never:
    # empty union -> NaN, left out
    assert out["iou"][0] == pytest.approx(0.75)
    assert out["iou"][1] == pytest.approx(0.5)
    assert out["iou"][3] == 0.0
    assert math.isnan(out["iou"][2]) and math.isnan(out["iou"][4])
    assert out["present"] == [True, True, False, False, False]
    assert out["classes_evaluated"] == 3 and out["classes_present"] == 2
    assert out["miou"] == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    assert out["miou_all_classes"] == pytest.approx((0.75 + 0.5) / 5)  # the reference: all C, empty union = 0
    assert out["pixel_acc"] == pytest.approx(5 / 7)  # the ignore pixel does not count
    assert out["pixels"] == [4, 3, 0, 0, 0]


def mmseg_miou(preds: np.ndarray, labels: np.ndarray, num_classes: int, ignore_index: int = 255) -> tuple[np.ndarray, float]:
    """mmseg's formula (mmseg.core.evaluation.metrics: intersect_and_union + total_area_to_metrics),
    written out: per image, drop ignore pixels, histogram the intersection, prediction and label
    areas; sum over images; IoU = intersect / union; mIoU = nanmean(IoU)."""
    inter = np.zeros(num_classes)
    area_p = np.zeros(num_classes)
    area_l = np.zeros(num_classes)
    for p, y in zip(preds, labels):
        keep = y != ignore_index
        p, y = p[keep], y[keep]
        hit = p[p == y]
        inter += np.histogram(hit, bins=num_classes, range=(0, num_classes - 1))[0]
        area_p += np.histogram(p, bins=num_classes, range=(0, num_classes - 1))[0]
        area_l += np.histogram(y, bins=num_classes, range=(0, num_classes - 1))[0]
    union = area_p + area_l - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union
    return iou, float(np.nanmean(iou))


def test_miou_matches_mmseg_formula_on_random_predictions_with_absent_classes():
    """Random predictions over 19 classes, 3 of them absent from the labels (issue 19's case): equal
    to mmseg's formula; the old 'labelled classes only' mean reads higher."""
    g = torch.Generator().manual_seed(0)
    c = 19
    labels = torch.randint(0, c - 3, (4, 32, 32), generator=g)  # classes 16, 17, 18 never labelled
    labels[:, :2] = 255
    correct = torch.rand(labels.shape, generator=g) < 0.55
    preds = torch.where(correct, labels, torch.randint(0, c, labels.shape, generator=g))
    preds = torch.where(labels == 255, torch.randint(0, c, labels.shape, generator=g), preds)
    cm = ConfusionMatrix(c)
    cm.update(preds[:2], labels[:2])
    cm.update(preds[2:], labels[2:])
    out = cm.compute()
    iou, miou = mmseg_miou(preds.numpy(), labels.numpy(), c)
    np.testing.assert_allclose(np.array(out["iou"]), iou, rtol=1e-12, equal_nan=True)
    assert out["miou"] == pytest.approx(miou, rel=1e-12)
    assert all(out["iou"][k] == 0.0 for k in (16, 17, 18))  # predicted, never labelled: IoU 0
    labelled_only = float(np.mean(iou[:16]))  # the old convention, for contrast
    assert labelled_only > out["miou"] + 0.01
    assert out["miou_all_classes"] == pytest.approx(float(np.nan_to_num(iou).mean()), rel=1e-12)


def test_miou_matches_torchmetrics():
    tm = pytest.importorskip("torchmetrics.classification")
    g = torch.Generator().manual_seed(1)
    c = 7
    labels = torch.randint(0, c - 2, (3, 16, 16), generator=g)
    preds = torch.randint(0, c, (3, 16, 16), generator=g)
    labels[0, 0] = 255
    cm = ConfusionMatrix(c)
    cm.update(preds, labels)
    metric = tm.MulticlassJaccardIndex(num_classes=c, average="macro", ignore_index=255)
    assert cm.compute()["miou"] == pytest.approx(float(metric(preds, labels)), rel=1e-6)


def test_confusion_shape_mismatch():
    with pytest.raises(ValueError, match="differ in shape"):
        ConfusionMatrix(3).update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3))


def test_td_ntd_by_hand():
    b, c, h, w = 1, 2, 2, 2
    s = torch.zeros(b, c, h, w)
    t = torch.tensor([[[[4.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 8.0]]]])
    labels = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 255, 255], [0, 0, 255, 255]]])  # -> [[0,1],[0,255]]
    m = TDNTDMeter(c, tau=4.0)
    m.update(s, t, labels)
    out = m.compute()
    ps = torch.full((4,), 0.25)
    pt0 = torch.softmax(t[0, 0].flatten() / 4, 0)
    pt1 = torch.softmax(t[0, 1].flatten() / 4, 0)
    sq0, sq1 = (pt0 - ps) ** 2, (pt1 - ps) ** 2  # positions: 0 -> label 0, 1 -> label 1, 2 -> label 0, 3 -> ignore
    assert out["td"][0] == pytest.approx(float((sq0[0] + sq0[2]) / 2))
    assert out["ntd"][0] == pytest.approx(float(sq0[1]))
    assert out["td"][1] == pytest.approx(float(sq1[1]))
    assert out["ntd"][1] == pytest.approx(float((sq1[0] + sq1[2]) / 2))


def test_td_ntd_accumulates_over_batches_like_one_pass():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 3, 4, 4, generator=g), torch.randn(4, 3, 4, 4, generator=g)
    y = torch.randint(0, 3, (4, 8, 8), generator=g)
    whole, parts = TDNTDMeter(3), TDNTDMeter(3)
    whole.update(s, t, y)
    parts.update(s[:1], t[:1], y[:1])
    parts.update(s[1:], t[1:], y[1:])
    for k in ("td", "ntd"):
        assert whole.compute()[k] == pytest.approx(parts.compute()[k])


def test_per_class_rows():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 1]]]))
    rows = per_class_rows(cm.compute(), None, ("a", "b"))
    assert [r["class_name"] for r in rows] == ["a", "b"]
    assert rows[0]["iou"] == 1.0 and math.isnan(rows[0]["td"])
