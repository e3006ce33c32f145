"""The adversarial term of SKD (Liu et al., TPAMI 2020) and IFVD (Wang et al., ECCV 2020).

What it transfers: a holistic "realism" of the whole score map. A critic (discriminator) D learns
to tell the teacher's logits (real) from the student's (fake); the student is trained to fool it.
Two loss forms (``distill.adv_loss``), both from the reference code (``losses/loss.py``
``CriterionAdvForG`` / ``CriterionAdv`` / ``CriterionAdditionalGP``):

    student (generator) term, both forms:  L_G = -mean D(z_S)                        weight 1e-3 (lambda_adv)
    'hinge' (default; what train_skd.py / train_ifvd.py run: ``CriterionAdv('hinge')``, no penalty):
        critic term  L_D = mean relu(1 - D(z_T)) + mean relu(1 + D(z_S))          weight 0.1 (lambda_d)
    'wgan-gp' (an option of the reference criteria, not used by its scripts):
        critic term  L_D = mean D(z_S) - mean D(z_T) + 10 * GP                    weight 0.1

with GP the WGAN-GP gradient penalty ``mean (||grad_x D(x)||_2 - 1)^2`` at random per-image
interpolations x of the two (detached) logit maps. The critic has its own optimiser (Adam,
lr 4e-4, betas (0.9, 0.99) as in the reference), steps once per training iteration after the
student's step, and follows the student's poly decay through ``lr_scale``.

Deviations from the reference critic (``models/sagan_models.py``), all for maps as small as the tiny CPU
models' 8x8 logits: 3x3 (not 4x4) stride-2 convs, so any input size >= 1 keeps a non-empty
output; no self-attention blocks; a final 1x1 conv averaged over positions instead of an
unpadded 4x4 conv. Kept: BatchNorm on the input logits (``preprocess_GAN_mode=1``), spectral
normalisation on every strided conv, LeakyReLU(0.1), widths 64-128-256-512.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from ..errors import check
from ._checks import check_logit_pair
from .params import MethodParams, require_nonnegative, require_positive


def wgan_generator_loss(d_student: Tensor) -> Tensor:
    """``-mean D(z_S)``: the student's adversarial term (scalar)."""
    return -d_student.float().mean()


def wgan_critic_loss(d_student: Tensor, d_teacher: Tensor) -> Tensor:
    """``mean D(z_S) - mean D(z_T)``: the critic's Wasserstein term (teacher = real; scalar)."""
    return d_student.float().mean() - d_teacher.float().mean()


def hinge_critic_loss(d_student: Tensor, d_teacher: Tensor) -> Tensor:
    """``mean relu(1 - D(z_T)) + mean relu(1 + D(z_S))``: the reference's hinge critic loss (scalar)."""
    return torch.relu(1.0 - d_teacher.float()).mean() + torch.relu(1.0 + d_student.float()).mean()


ADV_LOSSES = ("hinge", "wgan-gp")


@dataclass(frozen=True)
class AdversarialParams(MethodParams):
    """The critic's parameters, shared by SKD and IFVD: ``adv_loss`` 'hinge' (the reference scripts)
    or 'wgan-gp' (+ gradient penalty ``adv_gp_weight``), the student's term ``adv_g_weight``, the
    critic loss weight ``adv_d_weight`` and its Adam learning rate ``adv_lr`` (poly-decayed with the
    student's). Defaults: the reference recipe (module docstring)."""

    adv_loss: str = "hinge"
    adv_g_weight: float = 1e-3
    adv_d_weight: float = 0.1
    adv_gp_weight: float = 10.0
    adv_lr: float = 4e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.adv_loss in ADV_LOSSES, f"distill.adv_loss must be one of {ADV_LOSSES}, got {self.adv_loss!r}")
        for name in ("adv_g_weight", "adv_d_weight", "adv_gp_weight"):
            require_nonnegative(name, getattr(self, name))
        require_positive("adv_lr", self.adv_lr)


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor, mix: Tensor | None = None) -> Tensor:
    """WGAN-GP: ``mean_b (||d critic(x_b) / d x_b||_2 - 1)^2`` at ``x = mix * real + (1 - mix) * fake``.

    Args:
        real, fake: (B, C, h, w), detached inputs.
        mix: (B,) interpolation factors; default U(0, 1) from the global torch RNG.
    Returns:
        scalar; differentiable w.r.t. the critic's parameters (double backward).
    """
    check_logit_pair(fake, real)
    b = real.shape[0]
    if mix is None:
        mix = torch.rand(b, device=real.device)
    m = mix.to(real.dtype).view(b, 1, 1, 1)
    x = (m * real.detach() + (1 - m) * fake.detach()).requires_grad_(True)
    out = critic(x)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    norm = grad.reshape(b, -1).norm(dim=1)
    return ((norm - 1.0) ** 2).mean()


class Discriminator(nn.Module):
    """Spectral-norm critic on (B, C, h, w) logits -> (B,) scores (see the module docstring)."""

    def __init__(self, num_classes: int, conv_dim: int = 64, depth: int = 4) -> None:
        super().__init__()
        if num_classes < 2 or conv_dim < 1 or depth < 1:
            raise ValueError(f"Discriminator needs num_classes >= 2, conv_dim >= 1, depth >= 1; "
                             f"got {num_classes}, {conv_dim}, {depth}")
        self.preprocess = nn.BatchNorm2d(num_classes)
        layers: list[nn.Module] = []
        width_in = num_classes
        for i in range(depth):
            width_out = conv_dim * 2 ** i
            layers += [spectral_norm(nn.Conv2d(width_in, width_out, 3, stride=2, padding=1)), nn.LeakyReLU(0.1)]
            width_in = width_out
        self.body = nn.Sequential(*layers)
        self.last = nn.Conv2d(width_in, 1, 1)

    def forward(self, logits: Tensor) -> Tensor:
        # (B, C, h, w) -> (B, 512, h/16, w/16) -> (B, 1, ., .) -> (B,)
        return self.last(self.body(self.preprocess(logits.float()))).mean(dim=(1, 2, 3))


class AdversarialCritic(nn.Module):
    """The critic and its own optimiser, owned by a distiller (SKD, IFVD).

    - :meth:`generator_loss` (inside the student's forward): ``-mean D(z_S)``, with the critic's
      parameters frozen for that call so the student's loss puts no gradient on them; it also
      keeps detached copies of both logit maps for the critic step.
    - :meth:`step` (after the student's optimiser step): one critic update on those copies.
    - The optimiser state travels in the module's ``state_dict`` (``_extra_state``), so trainer
      checkpoints hold it and a resumed run continues exactly.
    """

    def __init__(self, num_classes: int, *, d_weight: float, gp_weight: float, lr: float, conv_dim: int = 64,
                 loss: str = "hinge") -> None:
        super().__init__()
        if loss not in ADV_LOSSES:
            raise ValueError(f"adversarial loss must be one of {ADV_LOSSES}, got {loss!r}")
        self.discriminator = Discriminator(num_classes, conv_dim)
        self.loss = loss
        self.d_weight, self.gp_weight, self.base_lr = d_weight, gp_weight, lr
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(0.9, 0.99))
        self._pending: tuple[Tensor, Tensor] | None = None

    def generator_loss(self, s_logits: Tensor, t_logits: Tensor) -> Tensor:
        check_logit_pair(s_logits, t_logits)
        self._pending = (s_logits.detach(), t_logits.detach())
        params = list(self.discriminator.parameters())
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        try:
            return wgan_generator_loss(self.discriminator(s_logits))
        finally:
            for p, f in zip(params, flags):
                p.requires_grad_(f)

    def step(self, lr_scale: float = 1.0) -> dict[str, Tensor]:
        """One critic update on the logits of the last :meth:`generator_loss` call; returns the
        detached terms ``adv_d`` (weighted critic loss) and, for 'wgan-gp', ``adv_gp`` (the raw penalty)."""
        if self._pending is None:
            return {}
        s, t = (x.float() for x in self._pending)
        self._pending = None
        for group in self.optimizer.param_groups:
            group["lr"] = self.base_lr * lr_scale
        with torch.enable_grad():
            if self.loss == "hinge":
                loss = self.d_weight * hinge_critic_loss(self.discriminator(s), self.discriminator(t))
                gp = None
            else:
                gp = gradient_penalty(self.discriminator, t, s) if self.gp_weight > 0 else s.new_zeros(())
                loss = self.d_weight * (wgan_critic_loss(self.discriminator(s), self.discriminator(t)) + self.gp_weight * gp)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.optimizer.step()
        out = {"adv_d": loss.detach()}
        if gp is not None:
            out["adv_gp"] = gp.detach()
        return out

    def get_extra_state(self) -> Any:
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: Any) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


class AdversarialMixin:
    """Adds the SKD/IFVD critic (``self.adversary``) and its student term and step."""

    adversary: AdversarialCritic
    params: AdversarialParams

    def _make_adversary(self, num_classes: int) -> None:
        c = self.params
        self.adversary = AdversarialCritic(num_classes, d_weight=c.adv_d_weight, gp_weight=c.adv_gp_weight, lr=c.adv_lr,
                                           loss=c.adv_loss)

    def _adversarial_term(self, s_logits: Tensor, t_logits: Tensor) -> Tensor:
        return self.params.adv_g_weight * self.adversary.generator_loss(s_logits, t_logits)

    def after_step(self, lr_scale: float = 1.0) -> dict[str, Tensor]:
        return self.adversary.step(lr_scale)


__all__ = [
    "ADV_LOSSES", "AdversarialCritic", "AdversarialMixin", "AdversarialParams", "Discriminator",
    "gradient_penalty", "hinge_critic_loss", "wgan_critic_loss", "wgan_generator_loss"
]
