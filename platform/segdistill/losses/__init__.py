"""Distillation losses: pure functions over tensors, each method's parameters and distiller, and the
registry of methods (:mod:`.registry`)."""

from .adversarial import (
    AdversarialCritic,
    AdversarialParams,
    Discriminator,
    gradient_penalty,
    wgan_critic_loss,
    wgan_generator_loss,
)
from .cirkd import (
    CIRKDParams,
    MemoryBank,
    ProjectionHead,
    contrast_kd_loss,
    memory_bytes,
    memory_contrast_terms,
    minibatch_pair_loss,
)
from .cwd import CWDParams, KDParams, PixelKD, channel_kl, cwd_loss, kd_loss
from .dist import DISTParams, dist_loss, dist_terms
from .distiller import Distiller
from .hwd import HWDParams, class_pixel_counts, downsample_labels, hwd_loss, hwd_weights
from .ifvd import IFVDParams, class_prototype_similarity, ifv_loss
from .mgd import MGDGenerator, MGDParams, mgd_loss, random_keep_mask
from .params import BatchCoupling, FeatureTap, MethodParams
from .registry import (
    METHODS,
    NO_METHOD,
    build_distiller,
    params_class,
    reference_alpha,
    register_method,
)
from .skd import SKDParams, pairwise_similarity_loss

__all__ = [
    "METHODS", "NO_METHOD", "AdversarialCritic", "AdversarialParams", "BatchCoupling", "CIRKDParams", "CWDParams",
    "DISTParams", "Discriminator", "Distiller", "FeatureTap", "HWDParams", "IFVDParams", "KDParams", "MGDGenerator",
    "MGDParams", "MemoryBank", "MethodParams", "PixelKD", "ProjectionHead", "SKDParams", "build_distiller",
    "channel_kl", "class_pixel_counts", "class_prototype_similarity", "contrast_kd_loss", "cwd_loss", "dist_loss",
    "dist_terms", "downsample_labels", "gradient_penalty", "hwd_loss", "hwd_weights", "ifv_loss", "kd_loss",
    "memory_bytes", "memory_contrast_terms", "mgd_loss", "minibatch_pair_loss", "pairwise_similarity_loss",
    "params_class", "random_keep_mask", "reference_alpha", "register_method", "wgan_critic_loss",
    "wgan_generator_loss",
]
