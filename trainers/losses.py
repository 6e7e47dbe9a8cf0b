"""The ALI value function in its logit form (paper Eq. 1 and 4, official code), and the losses beyond the paper.

With D's logit l(x, z) and sigma the logistic function, log sigma(l) = -softplus(-l) and
log(1 - sigma(l)) = -softplus(l). So:

- D maximises  E_q[log D(x, z_hat)] + E_p[log(1 - D(x_tilde, z))],
  i.e. minimises  softplus(-l(x, z_hat)) + softplus(l(x_tilde, z)).
- G_x and G_z use the non-saturating form on both terms (Eq. 4 / official code), i.e. they minimise
  softplus(l(x, z_hat)) + softplus(-l(x_tilde, z)): the same game with the labels swapped.

softplus of logits never takes log(0): this is the stable form of BCE on probabilities.

Beyond the paper (each a switch, off by default; docs/switches.md):

- ``train.loss: hinge``, the hinge loss of BigBiGAN (Donahue & Simonyan 2019, Eq. 3-4, after Lim & Ye 2017 and
  Miyato et al. 2018): D minimises relu(1 - s(x, z_hat)) + relu(1 + s(x_tilde, z)); the encoder and decoder
  minimise s(x, z_hat) - s(x_tilde, z), i.e. BigBiGAN's y * s with y = +1 for the encoder's pairs and -1 for the
  decoder's: they push the scores the other way from D, linearly.
- ``train.alice``: the explicit cycle-consistency term of ALICE (Li et al. 2017, section 4, "explicit" conditional
  entropy bound), added to the encoder and decoder loss with weight lambda: |x - G_x(G_z(x))| + |z - G_z(G_x(z))|
  with sampled codes and images (z_hat ~ q(z | x) is the sample the game already drew; G_z(x_tilde) is a fresh
  sample), each distance the mean over elements of |.| (``l1``) or (.)^2 (``l2``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Mean over the batch of softplus(-D(x, z_hat)) + softplus(D(x_tilde, z))."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Mean over the batch of softplus(D(x, z_hat)) + softplus(-D(x_tilde, z)) (non-saturating, Eq. 4)."""
    return F.softplus(real_logits).mean() + F.softplus(-fake_logits).mean()


def hinge_discriminator_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """Mean of relu(1 - s(x, z_hat)) + mean of relu(1 + s(x_tilde, z)) (BigBiGAN's l_D)."""
    return F.relu(1.0 - real_scores).mean() + F.relu(1.0 + fake_scores).mean()


def hinge_generator_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """Mean of s(x, z_hat) minus mean of s(x_tilde, z) (BigBiGAN's l_EG = y * s, y = +1 / -1)."""
    return real_scores.mean() - fake_scores.mean()


def loss_pair(name: str):
    """(discriminator loss, generator loss) functions of ``train.loss`` (its values are checked when the config
    loads, alitool/config.py)."""
    if name == "hinge":
        return hinge_discriminator_loss, hinge_generator_loss
    return discriminator_loss, generator_loss


def alice_cycle_loss(x: Tensor, x_cycle: Tensor, z: Tensor, z_cycle: Tensor, norm: str = "l1") -> Tensor:
    """ALICE's explicit cycle term (unweighted): mean |x - x_cycle| + mean |z - z_cycle| for ``l1``, the means of
    the squares for ``l2``; x_cycle = G_x(G_z(x)), z_cycle = G_z(G_x(z))."""
    dx, dz = (x - x_cycle).float(), (z - z_cycle).float()
    if norm == "l2":
        return dx.pow(2).mean() + dz.pow(2).mean()
    return dx.abs().mean() + dz.abs().mean()
