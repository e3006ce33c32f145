"""Shared helpers of the on-disk readers: path checks with explicit messages, PIL decoding, label LUTs."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from segdistill.config import DataConfig


def require_root(cfg: DataConfig, dataset: str, layout: str) -> Path:
    """``cfg.root`` as a Path; raises ``FileNotFoundError`` naming the expected layout when it is
    empty or not a directory."""
    if not cfg.root:
        raise FileNotFoundError(f"{dataset}: data.root is empty; set it to the directory that holds {layout}")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset}: data.root {str(root)!r} is not a directory; expected it to hold {layout}")
    return root


def pair_files(images: Sequence[Path], label_of: Callable[[Path], Path], *, dataset: str, limit: int
               ) -> list[tuple[Path, Path]]:
    """Sorted ``(image, label)`` pairs, capped to the first ``limit`` images (0 = all); an image
    whose label file is missing raises ``FileNotFoundError`` naming both paths."""
    chosen = sorted(images)
    if limit > 0:
        chosen = chosen[:limit]
    pairs = []
    for img in chosen:
        lbl = label_of(img)
        if not lbl.is_file():
            raise FileNotFoundError(f"{dataset}: image {img} has no label; expected {lbl}")
        pairs.append((img, lbl))
    return pairs


def read_image(path: Path) -> torch.Tensor:
    """``uint8 (3, H, W)`` RGB; an undecodable (corrupt, truncated, not an image) file raises
    ``ValueError`` naming it."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as exc:  # PIL: UnidentifiedImageError, "image file is truncated"
        raise ValueError(f"image {path} cannot be decoded ({type(exc).__name__}: {exc}); "
                         "the file is corrupt or not an image: re-extract or remove it") from exc
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def read_label(path: Path) -> np.ndarray:
    """Raw ``uint8 (H, W)`` label ids (PNG modes L or P; the palette index is the id)."""
    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"label {path} has PIL mode {im.mode!r}; expected a single-channel (L or P) PNG of class ids")
        arr = np.asarray(im)
    if arr.ndim != 2:
        raise ValueError(f"label {path} has shape {arr.shape}; expected (H, W)")
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"label {path} holds ids outside 0..255")
        arr = arr.astype(np.uint8)
    return arr


def make_lut(mapping: dict[int, int], ignore_index: int = 255) -> np.ndarray:
    """A 256-entry ``int64`` lookup table: raw id -> train id, unmapped ids -> ``ignore_index``."""
    lut = np.full(256, ignore_index, dtype=np.int64)
    for raw, train in mapping.items():
        lut[raw] = train
    return lut


def describe_ids(ids: Sequence[int]) -> str:
    """``[0, 1, 2, 3, 255]`` -> ``"0..3, 255"``."""
    out, ids = [], sorted(ids)
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else f"{ids[i]}..{ids[j]}")
        i = j + 1
    return ", ".join(out)


class FilePairSource:
    """Image/label files read lazily; labels mapped through a 256-entry LUT to train ids."""

    def __init__(self, pairs: list[tuple[Path, Path]], lut: np.ndarray, dataset: str,
                 raw_ids: Sequence[int] | None = None) -> None:
        self.pairs = pairs
        self.lut = lut
        self.dataset = dataset
        # raw ids the released label files may hold; any other id is an error, not silently ignored
        self.raw_ids = tuple(sorted(set(raw_ids))) if raw_ids is not None else None
        self._raw_ok = None
        if self.raw_ids is not None:
            self._raw_ok = np.zeros(256, dtype=bool)
            self._raw_ok[list(self.raw_ids)] = True

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img_path, lbl_path = self.pairs[index]
        image = read_image(img_path)
        raw = read_label(lbl_path)
        if self._raw_ok is not None and not self._raw_ok[raw].all():
            bad = np.unique(raw[~self._raw_ok[raw]])
            raise ValueError(f"{self.dataset}: label {lbl_path} holds ids {bad[:10].tolist()} outside the allowed "
                             f"raw ids {describe_ids(self.raw_ids)}; is data.root the raw release (not converted "
                             f"train ids) of this dataset?")
        label = torch.from_numpy(self.lut[raw])
        if tuple(image.shape[-2:]) != tuple(label.shape):
            raise ValueError(f"{self.dataset}: image {img_path} is {tuple(image.shape[-2:])} but its label "
                             f"{lbl_path} is {tuple(label.shape)}")
        return image, label
