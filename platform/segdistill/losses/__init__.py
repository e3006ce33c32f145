"""Distillation losses: pure functions over tensors, plus distiller modules in a registry."""

from .adversarial import AdversarialCritic, Discriminator, gradient_penalty, wgan_critic_loss, wgan_generator_loss
from .cirkd import MemoryBank, ProjectionHead, contrast_kd_loss, memory_bytes, memory_contrast_terms, minibatch_pair_loss
from .cwd import channel_kl, cwd_loss, kd_loss
from .dist import dist_loss, dist_terms
from .distillers import METHODS, Distiller, build_distiller, reference_alpha, register_method
from .hwd import class_pixel_counts, downsample_labels, hwd_loss, hwd_weights
from .ifvd import class_prototype_similarity, ifv_loss
from .mgd import MGDGenerator, mgd_loss, random_keep_mask
from .skd import pairwise_similarity_loss

__all__ = [
    "METHODS", "AdversarialCritic", "Discriminator", "Distiller", "MGDGenerator", "MemoryBank", "ProjectionHead",
    "build_distiller", "channel_kl", "class_pixel_counts", "class_prototype_similarity", "contrast_kd_loss",
    "cwd_loss", "dist_loss", "dist_terms", "downsample_labels", "gradient_penalty", "hwd_loss", "hwd_weights",
    "ifv_loss", "kd_loss", "memory_bytes", "memory_contrast_terms", "mgd_loss", "minibatch_pair_loss",
    "pairwise_similarity_loss", "random_keep_mask", "reference_alpha", "register_method", "wgan_critic_loss",
    "wgan_generator_loss",
]
