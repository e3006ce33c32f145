"""Metrics: confusion-matrix mIoU (absent classes excluded), pixel accuracy, TD/NTD."""

from __future__ import annotations

import math

import pytest
import torch

from segdistill.metrics import ConfusionMatrix, TDNTDMeter, per_class_rows


def test_confusion_miou_excludes_absent_classes():
    cm = ConfusionMatrix(4)
    target = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 255]]])
    pred = torch.tensor([[[0, 1, 1, 1], [0, 0, 3, 2]]])
    cm.update(pred, target)
    out = cm.compute()
    # class 0: tp 3, gt 4, pred 3 -> 3/4; class 1: tp 2, gt 3, pred 3 -> 2/4; class 2, 3 absent from gt
    assert out["iou"][0] == pytest.approx(0.75)
    assert out["iou"][1] == pytest.approx(0.5)
    assert math.isnan(out["iou"][2]) and math.isnan(out["iou"][3])
    assert out["present"] == [True, True, False, False]
    assert out["miou"] == pytest.approx((0.75 + 0.5) / 2)
    assert out["pixel_acc"] == pytest.approx(5 / 7)  # the ignore pixel does not count
    assert out["pixels"] == [4, 3, 0, 0]


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
