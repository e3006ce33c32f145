"""Distillation losses: pure functions over tensors, plus distiller modules in a registry."""

from .cwd import channel_kl, cwd_loss, kd_loss
from .distillers import METHODS, Distiller, build_distiller, register_method
from .hwd import class_pixel_counts, downsample_labels, hwd_loss, hwd_weights

__all__ = [
    "METHODS", "Distiller", "build_distiller", "channel_kl", "class_pixel_counts", "cwd_loss",
    "downsample_labels", "hwd_loss", "hwd_weights", "kd_loss", "register_method",
]
