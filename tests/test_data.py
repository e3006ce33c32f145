"""Data package: registry, synthetic benchmark, augmentation, and the real readers on tiny fixtures
written here in the datasets' real on-disk layouts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segdistill.config import DataConfig
from segdistill.data import (
    DATASETS,
    DatasetInfo,
    TrainTransform,
    build_datasets,
    dataset_info,
    denormalize,
    register_dataset,
)
from segdistill.data.ade20k import ADE20K_CLASSES
from segdistill.data.cityscapes import CITYSCAPES_CLASSES
from segdistill.data.cocostuff import COCOSTUFF_CLASSES, COCOSTUFF_UNUSED_IDS
from segdistill.data.diagnostics import class_pixel_counts, colour_classifier_miou, label_ceiling, long_tail_ratio
from segdistill.data.synthetic import class_table, render_scenes

SMALL = DataConfig(train_images=6, val_images=4)


# --- registry -----------------------------------------------------------------------------------

def test_registry_lists_all_datasets() -> None:
    assert {"synthetic", "cityscapes", "ade20k", "cocostuff"} <= set(DATASETS)


def test_unknown_dataset_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*cityscapes.*synthetic"):
        build_datasets(DataConfig(name="nope"))
    with pytest.raises(ValueError, match="known datasets"):
        dataset_info(DataConfig(name="nope"))


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):
        @register_dataset("synthetic")
        class Again:  # pragma: no cover - never registered
            @staticmethod
            def info(cfg): ...

            @staticmethod
            def sources(cfg): ...


def test_dataset_info_validates() -> None:
    with pytest.raises(ValueError, match="class names"):
        DatasetInfo("x", 3, ("a", "b"))
    with pytest.raises(ValueError, match="unique"):
        DatasetInfo("x", 2, ("a", "a"))
    with pytest.raises(ValueError, match="ignore_index"):
        DatasetInfo("x", 2, ("a", "b"), ignore_index=1)


@pytest.mark.parametrize("name,count,batchable", [("cityscapes", 19, True), ("ade20k", 150, False),
                                                  ("cocostuff", 171, False), ("synthetic", 24, True)])
def test_dataset_info_without_data(name: str, count: int, batchable: bool) -> None:
    info = dataset_info(DataConfig(name=name, root="/does/not/exist"))
    assert info.num_classes == count == len(info.class_names)
    assert info.ignore_index == 255 and info.val_batchable is batchable


# --- synthetic ----------------------------------------------------------------------------------

def test_synthetic_items_shapes_dtypes_and_ranges() -> None:
    cfg = dataclasses.replace(SMALL, crop_size=96)
    train, val, info = build_datasets(cfg)
    assert (len(train), len(val), info.name, info.num_classes) == (6, 4, "synthetic", 24)
    img, lbl = train[0]
    assert img.dtype == torch.float32 and img.shape == (3, 96, 96)
    assert lbl.dtype == torch.int64 and lbl.shape == (96, 96)
    ok = (lbl == 255) | ((lbl >= 0) & (lbl < 24))
    assert bool(ok.all())
    vimg, vlbl = val[0]
    assert vimg.shape == (3, 128, 128) and vlbl.shape == (128, 128) and vlbl.dtype == torch.int64
    assert int(vlbl.min()) >= 0 and int(vlbl.max()) < 24  # no ignore pixels before augmentation
    assert abs(float(vimg.mean())) < 2.0  # normalised, not raw 0..255
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=3)))
    assert batch[0].shape == (3, 3, 96, 96) and batch[1].shape == (3, 96, 96)


def test_synthetic_is_deterministic_by_seed_split_and_index() -> None:
    a_img, a_lbl = render_scenes(24, 64, seed=0, split="train", count=3)
    b_img, b_lbl = render_scenes(24, 64, seed=0, split="train", count=5)
    assert torch.equal(a_img, b_img[:3]) and torch.equal(a_lbl, b_lbl[:3])  # independent of count
    c_img, c_lbl = render_scenes(24, 64, seed=1, split="train", count=3)
    assert not torch.equal(a_img, c_img) and not torch.equal(a_lbl, c_lbl)
    v_img, _ = render_scenes(24, 64, seed=0, split="val", count=3)
    assert not torch.equal(a_img, v_img)
    assert not torch.equal(a_img[0], a_img[1])


def test_synthetic_train_augmentation_is_reproducible() -> None:
    train, _, _ = build_datasets(SMALL)
    torch.manual_seed(5)
    x1, y1 = train[2]
    torch.manual_seed(5)
    x2, y2 = train[2]
    assert torch.equal(x1, x2) and torch.equal(y1, y2)


@pytest.mark.parametrize("num_classes", range(2, 151))
def test_synthetic_every_class_count_constructs(num_classes: int) -> None:
    table = class_table(num_classes)
    assert table.num_classes == num_classes == len(set(table.names))
    assert len(table.stuff) >= 1 and len(table.things) >= 1
    _, lbl = render_scenes(num_classes, 48, seed=num_classes, split="val", count=2)
    assert int(lbl.max()) < num_classes


def test_synthetic_class_names_are_descriptive() -> None:
    names = class_table(24).names
    for expected in ("sky", "water", "road", "grass", "car", "boat", "disk", "ring", "lamp", "ball"):
        assert expected in names
    big = class_table(150)
    assert big.names[:10] == names[:10]  # the hand-written stuff classes come first at any size
    assert len(big.stuff) + len(big.things) == 150 and big.cues.count("context") >= 4


def test_synthetic_look_alike_pairs_differ_only_by_shape_or_context() -> None:
    table = class_table(24)
    things = {t.name: (j, t) for j, t in enumerate(table.things)}
    car, boat = things["car"][1], things["boat"][1]
    assert car.look == boat.look and car.shape == boat.shape
    assert table.thing_on[things["car"][0]] != table.thing_on[things["boat"][0]]
    assert things["disk"][1].look == things["box"][1].look and things["disk"][1].shape != things["box"][1].shape
    assert things["ring"][1].look == things["plate"][1].look
    assert things["lamp"][1].look == things["ball"][1].look and table.thing_attach[things["lamp"][0]] >= 0


def test_synthetic_long_tail() -> None:
    # 384 scenes at 64 px: frequencies are scale-free, so this matches the default 128 px set.
    _, lbl = render_scenes(24, 64, seed=0, split="train", count=384)
    counts = np.bincount(lbl.numpy().ravel(), minlength=24)
    assert (counts > 0).all()
    assert long_tail_ratio(counts) > 100


def test_synthetic_label_ceiling_at_output_stride_8() -> None:
    _, val, info = build_datasets(dataclasses.replace(SMALL, val_images=12))
    fit = label_ceiling(val, 8, method="fit", fit_steps=25)
    area = label_ceiling(val, 8, method="area")
    nearest = label_ceiling(val, 8, method="nearest")
    assert fit > 0.95
    assert 0.9 < area <= fit + 0.01
    assert nearest < area
    assert label_ceiling(val, 1, method="nearest") == pytest.approx(1.0)


def test_colour_classifier_is_poor_on_synthetic() -> None:
    cfg = dataclasses.replace(SMALL, train_images=48, val_images=16, image_size=64)
    train, val, info = build_datasets(cfg)
    assert colour_classifier_miou(train, val, info.num_classes, max_pixels=60_000, steps=60) < 0.3
    counts = class_pixel_counts(val, info.num_classes)
    assert counts.sum() == 16 * 64 * 64


# --- transforms ---------------------------------------------------------------------------------

def _encoded_pair(h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A label with random blocks and an image whose red channel is ``10 * label``."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 20, (h // 4, w // 4), generator=g).repeat_interleave(4, 0).repeat_interleave(4, 1)
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    image[0] = (label * 10).to(torch.uint8)
    image[1] = torch.arange(w).to(torch.uint8)[None].expand(h, w)
    return image, label


def test_transform_output_is_the_crop_size() -> None:
    image, label = _encoded_pair(40, 60)
    tf = TrainTransform(crop_size=32, scale_min=0.5, scale_max=2.0)
    for seed in range(10):
        x, y = tf(image, label, generator=torch.Generator().manual_seed(seed))
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert y.shape == (32, 32) and y.dtype == torch.int64


def test_transform_pads_with_ignore_when_the_scaled_image_is_smaller() -> None:
    image, label = _encoded_pair(32, 32)
    tf = TrainTransform(crop_size=48, scale_min=0.5, scale_max=0.5, flip=False)
    x, y = tf(image, label, generator=torch.Generator().manual_seed(0))
    assert y.shape == (48, 48)
    assert bool((y[16:, :] == 255).all()) and bool((y[:, 16:] == 255).all())
    assert bool((y[:16, :16] != 255).all())
    assert bool((x[:, 16:, :] == 0).all()) and bool((x[:, :, 16:] == 0).all())  # image padded with 0


def test_transform_flips_image_and_label_together() -> None:
    image, label = _encoded_pair(32, 32)
    tf = TrainTransform(crop_size=24, scale_min=1.0, scale_max=1.0, flip=True)
    flips = set()
    for seed in range(12):
        x, y = tf(image, label, generator=torch.Generator().manual_seed(seed))
        raw = denormalize(x).to(torch.int64)
        assert torch.equal(raw[0], y * 10)  # the red channel still encodes the label pixel-for-pixel
        flips.add(bool(raw[1, 0, 0] > raw[1, 0, -1]))  # the green ramp runs backwards when flipped
    assert flips == {True, False}


def test_transform_never_interpolates_labels() -> None:
    image, label = _encoded_pair(36, 36, seed=3)
    label = torch.where(label < 10, 0, 7)
    tf = TrainTransform(crop_size=40, scale_min=0.6, scale_max=1.9)
    for seed in range(8):
        _, y = tf(image, label, generator=torch.Generator().manual_seed(seed))
        assert set(y.unique().tolist()) <= {0, 7, 255}


def _whole_image_transform(tf: TrainTransform, image, label, generator):
    """The transform as the paper states it, on the whole image: scale, normalise, pad, crop, flip
    (what TrainTransform computed before it resized only the crop window), with the same draws."""
    from segdistill.data.transforms import normalize, pad_pair, scale_pair

    u = float(torch.rand((), generator=generator))
    img, lbl = scale_pair(image.to(torch.float32), label.to(torch.int64), tf.scale_min + (tf.scale_max - tf.scale_min) * u)
    img, lbl = pad_pair(normalize(img), lbl, tf.crop_size, tf.ignore_index)
    h, w = lbl.shape
    top = int(torch.randint(0, h - tf.crop_size + 1, (1,), generator=generator).item())
    left = int(torch.randint(0, w - tf.crop_size + 1, (1,), generator=generator).item())
    img, lbl = img[:, top:top + tf.crop_size, left:left + tf.crop_size], lbl[top:top + tf.crop_size, left:left + tf.crop_size]
    if tf.flip and bool(torch.rand((), generator=generator) < 0.5):
        img, lbl = img.flip(-1), lbl.flip(-1)
    return img, lbl


@pytest.mark.parametrize("shape,crop,scales", [((40, 60), 32, (0.5, 2.0)), ((37, 53), 48, (0.5, 2.0)),
                                               ((64, 48), 32, (1.0, 1.0)), ((30, 30), 48, (0.5, 0.5)),
                                               ((33, 71), 40, (1.3, 1.3))])
def test_windowed_transform_equals_the_whole_image_transform(shape, crop, scales) -> None:
    """Only the crop window is resized: labels (nearest) and unit-scale images are bit-identical to
    scaling the whole image first; bilinear images agree up to float rounding (< 1e-4 after
    normalisation, i.e. a few thousandths of a grey level)."""
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, *shape), generator=g, dtype=torch.uint8)
    label = torch.randint(0, 20, shape, generator=g)
    label[:3] = 255
    tf = TrainTransform(crop_size=crop, scale_min=scales[0], scale_max=scales[1])
    for seed in range(12):
        x, y = tf(image, label, generator=torch.Generator().manual_seed(seed))
        rx, ry = _whole_image_transform(tf, image, label, torch.Generator().manual_seed(seed))
        assert torch.equal(y, ry), seed
        assert x.shape == rx.shape and (x - rx).abs().max() < 1e-4, (seed, float((x - rx).abs().max()))
        if scales == (1.0, 1.0):
            assert torch.equal(x, rx)


def test_transform_is_deterministic_given_a_generator() -> None:
    image, label = _encoded_pair(40, 40)
    tf = TrainTransform(crop_size=32)
    a = tf(image, label, generator=torch.Generator().manual_seed(9))
    b = tf(image, label, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# --- real readers on fixtures in the real layouts -----------------------------------------------

def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _rgb(h: int = 16, w: int = 24) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _label(values: list[int], h: int = 16, w: int = 24) -> np.ndarray:
    """Vertical bands of the given raw ids."""
    lab = np.zeros((h, w), dtype=np.uint8)
    for i, v in enumerate(values):
        lab[:, i * w // len(values):(i + 1) * w // len(values)] = v
    return lab


def _cityscapes(root: Path) -> None:
    for split, city, n in (("train", "aachen", 3), ("val", "frankfurt", 1)):
        for k in range(n):
            stem = f"{city}_{k:06d}_000019"
            _write(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", _rgb())
            _write(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", _label([0, 7, 26, 33]))


def _band_values(lbl: torch.Tensor, n: int) -> list[int]:
    w = lbl.shape[1]
    return [int(lbl[0, i * w // n]) for i in range(n)]


def test_cityscapes_reader(tmp_path: Path) -> None:
    _cityscapes(tmp_path)
    cfg = DataConfig(name="cityscapes", root=str(tmp_path), crop_size=16)
    train, val, info = build_datasets(cfg)
    assert info.num_classes == 19 and info.class_names == CITYSCAPES_CLASSES and info.class_names[13] == "car"
    assert (len(train), len(val)) == (3, 1)
    img, lbl = val[0]
    assert img.shape == (3, 16, 24) and lbl.dtype == torch.int64
    assert _band_values(lbl, 4) == [255, 0, 13, 18]  # 0 -> ignore, 7 road, 26 car, 33 bicycle
    x, y = train[0]
    assert x.shape == (3, 16, 16) and y.shape == (16, 16)
    capped = build_datasets(dataclasses.replace(cfg, max_train_images=2))[0]
    assert len(capped) == 2 and capped.source.pairs[0][0].name.startswith("aachen_000000")


def test_cityscapes_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data.root is empty"):
        build_datasets(DataConfig(name="cityscapes", root=""))
    with pytest.raises(FileNotFoundError, match="not a directory.*leftImg8bit"):
        build_datasets(DataConfig(name="cityscapes", root=str(tmp_path / "missing")))
    with pytest.raises(FileNotFoundError, match=r"expected Cityscapes images under .*leftImg8bit/train/<city>/\*_leftImg8bit.png; found none"):
        build_datasets(DataConfig(name="cityscapes", root=str(tmp_path)))
    _cityscapes(tmp_path)
    lost = tmp_path / "gtFine" / "train" / "aachen" / "aachen_000001_000019_gtFine_labelIds.png"
    lost.unlink()
    with pytest.raises(FileNotFoundError, match=r"aachen_000001_000019_leftImg8bit.png has no label; expected .*aachen_000001_000019_gtFine_labelIds.png"):
        build_datasets(DataConfig(name="cityscapes", root=str(tmp_path)))


def test_cityscapes_size_mismatch_is_reported(tmp_path: Path) -> None:
    _cityscapes(tmp_path)
    _write(tmp_path / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000019_gtFine_labelIds.png", _label([7], 8, 8))
    _, val, _ = build_datasets(DataConfig(name="cityscapes", root=str(tmp_path)))
    with pytest.raises(ValueError, match="frankfurt_000000_000019_leftImg8bit.png is"):
        val[0]


def _ade(root: Path) -> Path:
    base = root / "ADEChallengeData2016"
    for split, n in (("training", 2), ("validation", 2)):
        for k in range(n):
            stem = f"ADE_{split[:5]}_{k:08d}"
            _write(base / "images" / split / f"{stem}.jpg", _rgb())
            _write(base / "annotations" / split / f"{stem}.png", _label([0, 1, 150, 42]))
    return base


def test_ade20k_reader(tmp_path: Path) -> None:
    base = _ade(tmp_path)
    for root in (tmp_path, base):  # the parent, or ADEChallengeData2016 itself
        train, val, info = build_datasets(DataConfig(name="ade20k", root=str(root), crop_size=16))
        assert info.num_classes == 150 == len(ADE20K_CLASSES) and info.class_names[:3] == ("wall", "building", "sky")
        assert info.class_names[-1] == "flag" and not info.val_batchable
        assert (len(train), len(val)) == (2, 2)
        assert _band_values(val[1][1], 4) == [255, 0, 149, 41]


def test_ade20k_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016"):
        build_datasets(DataConfig(name="ade20k", root=str(tmp_path)))
    base = _ade(tmp_path)
    (base / "annotations" / "validation" / "ADE_valid_00000001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"ADE_valid_00000001.jpg has no label; expected .*annotations/validation/ADE_valid_00000001.png"):
        build_datasets(DataConfig(name="ade20k", root=str(tmp_path)))
    for p in (base / "images" / "training").glob("*.jpg"):
        p.unlink()
    with pytest.raises(FileNotFoundError, match=r"expected ADE20K images under .*images/training/\*.jpg; found none"):
        build_datasets(DataConfig(name="ade20k", root=str(tmp_path)))


def _coco(root: Path, raw: list[int]) -> None:
    for split, n in (("train2017", 2), ("val2017", 1)):
        for k in range(n):
            stem = f"{k + 9:012d}"
            _write(root / "images" / split / f"{stem}.jpg", _rgb())
            _write(root / "annotations" / split / f"{stem}.png", _label(raw))


def test_cocostuff_reader(tmp_path: Path) -> None:
    raw = [0, 11, 12, 90, 91, 181, 255]
    _coco(tmp_path, raw)
    train, val, info = build_datasets(DataConfig(name="cocostuff", root=str(tmp_path), crop_size=16))
    assert info.num_classes == 171 == len(COCOSTUFF_CLASSES) and not info.val_batchable
    assert info.class_names[0] == "person" and info.class_names[79] == "toothbrush" and info.class_names[80] == "banner"
    assert (len(train), len(val)) == (2, 1)
    # used ids are contiguous (12 -> 11 after the unused 11; 91 -> 80; 181 -> 170); unused ids
    # and 255 are ignored
    assert _band_values(val[0][1], len(raw)) == [0, 255, 11, 255, 80, 170, 255]
    # ids past 181 are not in the release (converted or foreign labels): an error naming the file
    _coco(tmp_path, [0, 182])
    train, _, _ = build_datasets(DataConfig(name="cocostuff", root=str(tmp_path), crop_size=16))
    with pytest.raises(ValueError, match=r"000000000009.png holds ids \[182\] outside the allowed raw ids 0..181, 255"):
        train[0]


def test_cocostuff_mapping_is_a_bijection_onto_171_classes() -> None:
    from segdistill.data.cocostuff import COCOSTUFF_ID_TO_TRAINID

    assert len(COCOSTUFF_UNUSED_IDS) == 11
    assert sorted(COCOSTUFF_ID_TO_TRAINID.values()) == list(range(171))
    assert set(COCOSTUFF_ID_TO_TRAINID) | set(COCOSTUFF_UNUSED_IDS) == set(range(182))


def test_cocostuff_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"expected COCO-Stuff images under .*images/train2017/\*.jpg; found none"):
        build_datasets(DataConfig(name="cocostuff", root=str(tmp_path)))
    _coco(tmp_path, [0])
    (tmp_path / "annotations" / "val2017" / "000000000009.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"000000000009.jpg has no label; expected .*annotations/val2017/000000000009.png"):
        build_datasets(DataConfig(name="cocostuff", root=str(tmp_path)))
