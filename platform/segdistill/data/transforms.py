"""Training augmentation and evaluation preprocessing (paper supplement Sec. III).

Training: random scale in ``[scale_min, scale_max]`` (bilinear image, nearest label), normalise
with the ImageNet mean/std, pad to the crop size (image with 0 -- i.e. the mean colour, since the
reference code pads after mean subtraction -- label with ``ignore_index``), random crop, random
horizontal flip. Evaluation: whole image, normalised, nothing else.

Everything works on torch tensors: images ``uint8 (3, H, W)`` in, ``float32 (3, h, w)`` out; labels
``int64 (H, W)``. Random draws come from the ``generator`` passed in (``None``: torch's global RNG,
which ``DataLoader`` seeds per worker), so augmentation is reproducible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(image: torch.Tensor) -> torch.Tensor:
    """``uint8 or float (3, H, W)`` in [0, 255] -> ``float32 (3, H, W)`` ImageNet-normalised."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image of shape (3, H, W), got {tuple(image.shape)}")
    x = image.to(torch.float32).div(255.0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    return (x - mean) / std


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize`: ``float32 (3, H, W)`` -> ``uint8 (3, H, W)``."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    return ((image * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8)


def nearest_indices(in_size: int, out_size: int) -> torch.Tensor:
    """Source index of each output pixel for nearest resizing with pixel-centre alignment
    (PIL ``NEAREST`` / torch ``nearest-exact``): ``floor((i + 0.5) * in / out)``."""
    idx = ((torch.arange(out_size, dtype=torch.float64) + 0.5) * (in_size / out_size)).floor().long()
    return idx.clamp_(0, in_size - 1)


def resize_label(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest resize of an ``int64 (H, W)`` label to ``size``; values are copied, never interpolated."""
    h, w = label.shape
    return label[nearest_indices(h, size[0])][:, nearest_indices(w, size[1])]


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (``align_corners=False``, no antialias, like the reference's cv2 INTER_LINEAR)
    of a float ``(3, H, W)`` image."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


def scale_pair(image: torch.Tensor, label: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale both by ``scale``: float image bilinear, label nearest. Sizes round, minimum 1."""
    h, w = label.shape
    size = (max(1, int(round(h * scale))), max(1, int(round(w * scale))))
    return resize_image(image, size), resize_label(label, size)


def pad_pair(image: torch.Tensor, label: torch.Tensor, size: int, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad bottom/right to at least ``size x size``: image with 0, label with ``ignore_index``."""
    h, w = label.shape
    ph, pw = max(size - h, 0), max(size - w, 0)
    if ph == 0 and pw == 0:
        return image, label
    return F.pad(image, (0, pw, 0, ph), value=0.0), F.pad(label, (0, pw, 0, ph), value=ignore_index)


def _randint(high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in ``[0, high]``."""
    return int(torch.randint(0, high + 1, (1,), generator=generator).item())


class TrainTransform:
    """Random scale -> normalise -> pad -> random crop -> random horizontal flip.

    ``__call__(image uint8 (3, H, W), label int64 (H, W), generator=None)`` returns
    ``(float32 (3, crop, crop), int64 (crop, crop))``.
    """

    def __init__(self, *, crop_size: int, scale_min: float = 0.5, scale_max: float = 2.0,
                 flip: bool = True, ignore_index: int = 255) -> None:
        if crop_size < 1:
            raise ValueError(f"crop_size must be >= 1, got {crop_size}")
        if not 0 < scale_min <= scale_max:
            raise ValueError(f"need 0 < scale_min <= scale_max, got {scale_min}, {scale_max}")
        self.crop_size = crop_size
        self.scale_min = scale_min
        self.scale_max = scale_max
        self.flip = flip
        self.ignore_index = ignore_index

    def __call__(self, image: torch.Tensor, label: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        img, lbl, _ = self.apply(image, label, generator)
        return img, lbl

    def apply(self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """:meth:`__call__` that also says whether the pair was flipped (the same random draws)."""
        if image.shape[-2:] != label.shape:
            raise ValueError(f"image {tuple(image.shape)} and label {tuple(label.shape)} sizes differ")
        u = float(torch.rand((), generator=generator))
        scale = self.scale_min + (self.scale_max - self.scale_min) * u
        img, lbl = scale_pair(image.to(torch.float32), label.to(torch.int64), scale)
        img = normalize(img)
        img, lbl = pad_pair(img, lbl, self.crop_size, self.ignore_index)
        h, w = lbl.shape
        top, left = _randint(h - self.crop_size, generator), _randint(w - self.crop_size, generator)
        img = img[:, top:top + self.crop_size, left:left + self.crop_size]
        lbl = lbl[top:top + self.crop_size, left:left + self.crop_size]
        do_flip = bool(torch.rand((), generator=generator) < 0.5)
        flipped = self.flip and do_flip
        if flipped:
            img, lbl = img.flip(-1), lbl.flip(-1)
        return img.contiguous(), lbl.contiguous(), flipped

    def variant_count(self, height: int, width: int) -> int | None:
        """How many distinct outputs an ``height x width`` input can have: 1 or 2 (flip) when the scale
        is fixed and the scaled image fits in the crop (so the crop offset is always 0); None when the
        augmentation is unbounded (random scale or random crop position)."""
        if self.scale_min != self.scale_max:
            return None
        if round(height * self.scale_min) > self.crop_size or round(width * self.scale_min) > self.crop_size:
            return None
        return 2 if self.flip else 1

    def variant(self, image: torch.Tensor, label: torch.Tensor, flipped: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The output :meth:`apply` gives when it draws ``flipped``, for finite augmentation only."""
        if self.variant_count(*label.shape) is None:
            raise ValueError("variant() needs a fixed scale and no random crop (see variant_count)")
        img, lbl = scale_pair(image.to(torch.float32), label.to(torch.int64), self.scale_min)
        img, lbl = pad_pair(normalize(img), lbl, self.crop_size, self.ignore_index)
        img, lbl = img[:, :self.crop_size, :self.crop_size], lbl[:self.crop_size, :self.crop_size]
        if flipped:
            img, lbl = img.flip(-1), lbl.flip(-1)
        return img.contiguous(), lbl.contiguous()


class EvalTransform:
    """Whole image, normalised: ``(uint8 (3, H, W), int64 (H, W)) -> (float32 (3, H, W), int64 (H, W))``."""

    def __call__(self, image: torch.Tensor, label: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``generator`` is accepted for symmetry with :class:`TrainTransform` and unused."""
        if image.shape[-2:] != label.shape:
            raise ValueError(f"image {tuple(image.shape)} and label {tuple(label.shape)} sizes differ")
        return normalize(image), label.to(torch.int64)
