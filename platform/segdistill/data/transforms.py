"""Training augmentation and evaluation preprocessing (paper supplement Sec. III).

Training: random scale in ``[scale_min, scale_max]`` (bilinear image, nearest label), normalise
(:class:`Preprocessing`: channel order, scale, mean, std; ImageNet's RGB mean/std by default, the
reference code's BGR minus the Caffe means for its checkpoints), pad to the crop size (image with 0
-- i.e. the mean colour, since the reference code pads after mean subtraction -- label with
``ignore_index``), random crop, random horizontal flip. Evaluation: whole image, normalised,
nothing else.

Everything works on torch tensors: images ``uint8 (3, H, W)`` in, ``float32 (3, h, w)`` out; labels
``int64 (H, W)``. Random draws come from the ``generator`` passed in (``None``: torch's global RNG,
which ``DataLoader`` seeds per worker), so augmentation is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image becomes model input: ``x[c] = (pixel[c] / scale - mean[c]) / std[c]``, then the
    channels in ``channel_order``. ``mean`` and ``std`` are per colour in (R, G, B) order, on the scale
    after the division (the ``data.*`` fields of the same names, ``segdistill.config``).

    Arithmetic: in float32, as torchvision's ``ToTensor`` + ``Normalize`` do; except that with unit
    scale and std (the reference's convention: a plain mean subtraction) the subtraction runs in
    float64 and is rounded once to float32, as the reference's numpy code does (datasets.py: float32
    image minus a float64 mean), so its inputs are reproduced bit for bit.
    """

    channel_order: str = "rgb"
    scale: float = 255.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or self.scale <= 0 or min(self.std) <= 0:
            raise ValueError(f"need 3 means, 3 positive stds and a positive scale, got {self}")

    def _stats(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std), each (3, 1, 1), in the model's channel order."""
        order = [0, 1, 2] if self.channel_order == "rgb" else [2, 1, 0]
        mean = torch.tensor([self.mean[i] for i in order], dtype=dtype).view(3, 1, 1)
        std = torch.tensor([self.std[i] for i in order], dtype=dtype).view(3, 1, 1)
        return mean, std

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """``uint8 or float (3, H, W)`` RGB in [0, 255] -> ``float32 (3, H, W)`` model input."""
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an image of shape (3, H, W), got {tuple(image.shape)}")
        if self.subtract_only:  # x - mean in float64, one rounding (the reference's numpy arithmetic)
            x = image.to(torch.float32).to(torch.float64)
            if self.channel_order == "bgr":
                x = x.flip(0)
            return (x - self._stats(torch.float64)[0]).to(torch.float32)
        x = image.to(torch.float32).div(self.scale)
        if self.channel_order == "bgr":
            x = x.flip(0)
        mean, std = self._stats()
        return (x - mean) / std

    @property
    def subtract_only(self) -> bool:
        """True when preprocessing is a plain mean subtraction (unit scale and std)."""
        return self.scale == 1.0 and all(s == 1.0 for s in self.std)

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of ``__call__`` for figures: ``float32 (3, H, W)`` -> ``uint8 (3, H, W)`` RGB."""
        mean, std = self._stats()
        rgb = (x.float() * std + mean) * self.scale
        if self.channel_order == "bgr":
            rgb = rgb.flip(0)
        return rgb.round().clamp(0, 255).to(torch.uint8)


IMAGENET = Preprocessing()
# the reference code's: BGR, 0-255 scale, minus the Caffe BGR means, no std (docs/REFERENCE.md)
REFERENCE = Preprocessing("bgr", 1.0, (122.67891434, 116.66876762, 104.00698793), (1.0, 1.0, 1.0))


def normalize(image: torch.Tensor, preprocessing: Preprocessing = IMAGENET) -> torch.Tensor:
    """``uint8 or float (3, H, W)`` RGB in [0, 255] -> ``float32 (3, H, W)`` model input (ImageNet
    mean/std by default)."""
    return preprocessing(image)


def denormalize(image: torch.Tensor, preprocessing: Preprocessing = IMAGENET) -> torch.Tensor:
    """Inverse of :func:`normalize`: ``float32 (3, H, W)`` -> ``uint8 (3, H, W)`` RGB."""
    return preprocessing.invert(image)


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


def _bilinear_taps(in_size: int, out_size: int, start: int, count: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source rows (or columns) and weights of output pixels ``start .. start+count-1`` when
    ``in_size`` pixels are resized bilinearly to ``out_size`` (``align_corners=False``, as
    :func:`resize_image`): position ``(i + 0.5) * in / out - 0.5`` clamped at 0, between ``i0`` and
    ``i1 = min(i0 + 1, in - 1)`` with weight ``w`` on ``i1``."""
    pos = ((torch.arange(start, start + count, dtype=torch.float64) + 0.5) * (in_size / out_size) - 0.5).clamp_(min=0)
    i0 = pos.floor().long().clamp_(max=in_size - 1)
    i1 = (i0 + 1).clamp_(max=in_size - 1)
    return i0, i1, (pos - i0).to(torch.float32)


def resize_window(image: torch.Tensor, size: tuple[int, int], top: int, left: int, height: int, width: int
                  ) -> torch.Tensor:
    """``resize_image(image.float(), size)[:, top:top+height, left:left+width]``, computing little
    more than the window when it is a small part of the resized image (a 2x zoom cropped back to the
    input size: about 5x faster on one CPU core). Then separable: the window's source columns are gathered
    and interpolated on the source rows it needs, then its rows (equal to :func:`resize_image` up to
    float rounding, a few 1e-3 on the 0-255 scale); otherwise (and at ``size`` equal to the input)
    exactly :func:`resize_image` and a slice. ``image``: ``(C, H, W)``, any dtype; returns float32."""
    h, w = image.shape[-2:]
    if (h, w) == tuple(size) or height * width >= 0.6 * size[0] * size[1]:
        return resize_image(image.to(torch.float32), size)[:, top:top + height, left:left + width]
    y0, y1, wy = _bilinear_taps(h, size[0], top, height)
    x0, x1, wx = _bilinear_taps(w, size[1], left, width)
    r0, r1 = int(y0.min()), int(y1.max()) + 1  # only the source rows the window reads
    src = image[:, r0:r1]
    cols = src[:, :, x0].to(torch.float32).lerp_(src[:, :, x1].to(torch.float32), wx)
    return cols.index_select(1, y0 - r0).lerp_(cols.index_select(1, y1 - r0), wy[:, None])


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
                 flip: bool = True, ignore_index: int = 255, preprocessing: Preprocessing = IMAGENET) -> None:
        if crop_size < 1:
            raise ValueError(f"crop_size must be >= 1, got {crop_size}")
        if not 0 < scale_min <= scale_max:
            raise ValueError(f"need 0 < scale_min <= scale_max, got {scale_min}, {scale_max}")
        self.crop_size = crop_size
        self.scale_min = scale_min
        self.scale_max = scale_max
        self.flip = flip
        self.ignore_index = ignore_index
        self.preprocessing = preprocessing

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
        h, w = self._scaled_size(label, scale)
        # the crop window in the padded, scaled image (the same draws as scaling, padding and cropping
        # the whole image); only the window is then resized, normalised and padded
        top = _randint(max(h, self.crop_size) - self.crop_size, generator)
        left = _randint(max(w, self.crop_size) - self.crop_size, generator)
        do_flip = bool(torch.rand((), generator=generator) < 0.5)
        flipped = self.flip and do_flip
        img, lbl = self._window(image, label, (h, w), top, left)
        if flipped:
            img, lbl = img.flip(-1), lbl.flip(-1)
        return img.contiguous(), lbl.contiguous(), flipped

    @staticmethod
    def _scaled_size(label: torch.Tensor, scale: float) -> tuple[int, int]:
        h, w = label.shape
        return max(1, int(round(h * scale))), max(1, int(round(w * scale)))

    def _window(self, image: torch.Tensor, label: torch.Tensor, size: tuple[int, int], top: int, left: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``crop x crop`` window at (top, left) of the image and label scaled to ``size``, padded
        bottom/right (image 0 after normalisation, label ``ignore_index``) where it passes their edge."""
        h, w = size
        rows, cols = min(self.crop_size, h - top), min(self.crop_size, w - left)
        img = self.preprocessing(resize_window(image, size, top, left, rows, cols))
        H, W = label.shape
        lbl = label[nearest_indices(H, h)[top:top + rows]][:, nearest_indices(W, w)[left:left + cols]].to(torch.int64)
        return pad_pair(img, lbl, self.crop_size, self.ignore_index)

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
        img, lbl = self._window(image, label, self._scaled_size(label, self.scale_min), 0, 0)
        if flipped:
            img, lbl = img.flip(-1), lbl.flip(-1)
        return img.contiguous(), lbl.contiguous()


class EvalTransform:
    """Whole image, normalised: ``(uint8 (3, H, W), int64 (H, W)) -> (float32 (3, H, W), int64 (H, W))``."""

    def __init__(self, preprocessing: Preprocessing = IMAGENET) -> None:
        self.preprocessing = preprocessing

    def __call__(self, image: torch.Tensor, label: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``generator`` is accepted for symmetry with :class:`TrainTransform` and unused."""
        if image.shape[-2:] != label.shape:
            raise ValueError(f"image {tuple(image.shape)} and label {tuple(label.shape)} sizes differ")
        return self.preprocessing(image), label.to(torch.int64)
