"""The ALI value function in its logit form (paper Eq. 1 and 4, official code).

With D's logit l(x, z) and sigma the logistic function, log sigma(l) = -softplus(-l) and
log(1 - sigma(l)) = -softplus(l). So:

- D maximises  E_q[log D(x, z_hat)] + E_p[log(1 - D(x_tilde, z))],
  i.e. minimises  softplus(-l(x, z_hat)) + softplus(l(x_tilde, z)).
- G_x and G_z use the non-saturating form on both terms (Eq. 4 / official code), i.e. they minimise
  softplus(l(x, z_hat)) + softplus(-l(x_tilde, z)): the same game with the labels swapped.

softplus of logits never takes log(0): this is the stable form of BCE on probabilities.
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
