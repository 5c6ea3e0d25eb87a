"""A conditional ladder VAE for continual learning (Chen et al., CVPR 2023, §4.4, Fig. 4d).

:class:`CondLadderVAE` is :class:`dgmkd.models.hvae.LadderVAE` with ``num_conditions`` one-hot
conditions (default 2: the task, 0 = the old part of the data, 1 = the new part) entering *every*
block, as in the paper's code (see :mod:`dgmkd.models.hvae`, "Conditions"):

* encoder: ``c`` is concatenated to the input of the stem's fully connected layer (after the
  convolutions) and of every bottom-up MLP block;
* decoder: ``c`` is concatenated to the input of every prior network ``p(z_i | z_{i+1}, c)`` and
  of the image decoder ``p(x | z1, c)``;
* the top prior is learned: ``p(z_L | c) = N(mu(c), sigma(c))`` (a linear map of the one-hot).

The site names are those of :class:`LadderVAE` (``z5 .. z1``, ``x``; the inference DGM has
``x_rec``) whatever the condition, so :func:`dgmkd.couple` pairs ``M_old(n, 0)`` with
``M_new(n, 0)`` site by site. Every method takes the condition as its last argument ``c``.

Example:
    >>> import torch, dgmkd
    >>> from dgmkd.models.cond_hvae import CondLadderVAE
    >>> m = CondLadderVAE(num_conditions=2, image_size=8, width=8)
    >>> m.sample(4, c=1).shape
    torch.Size([4, 1, 8, 8])
    >>> c = dgmkd.couple(m, m, 16, 0)
    >>> float(dgmkd.losses.unified(c))
    0.0
"""

from __future__ import annotations

from .hvae import LadderVAE
from ..saving import buildable

__all__ = ["CondLadderVAE"]


@buildable
class CondLadderVAE(LadderVAE):
    """:class:`LadderVAE` conditioned on a one-hot ``c`` in every encoder and decoder block.

    Args:
        num_conditions: number of conditions (tasks); 2 for one continual-learning step.
        Other arguments as :class:`LadderVAE`.
    """

    def __init__(self, num_conditions: int = 2, image_size: int = 8, channels: int = 1, width: int = 32,
                 latent_dims: tuple[int, ...] = (16, 12, 8, 6, 4), hidden_mult: int = 4,
                 likelihood: str = "gaussian", sigma: float = 0.1, min_std: float = 1e-3):
        if int(num_conditions) < 1:
            raise ValueError(f"num_conditions must be >= 1, got {num_conditions}")
        super().__init__(image_size=image_size, channels=channels, width=width, latent_dims=latent_dims,
                         hidden_mult=hidden_mult, likelihood=likelihood, sigma=sigma, min_std=min_std,
                         num_conditions=num_conditions)
