"""A chain of scalar Gaussian latents with residual-MLP conditionals.

``z_1 ~ U[-1, 1]``, ``z_{i+1} ~ N(z_i + r_i(z_i), s_i^2)`` for ``i < L``, the last layer ``z_L``
being the target ``y``. The residual form makes a deep chain start near the identity (the student
of Chen et al. 2023, §3.2). ``s_i`` is a learned constant per layer.

Example:
    >>> from dgmkd.models import ResidualChain
    >>> ResidualChain(layers=4, hidden=8)(3).shape
    torch.Size([3, 1])
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Normal, Uniform

from ..sites import latent, target
from ..saving import buildable

__all__ = ["ResidualChain"]


@buildable
class ResidualChain(nn.Module):
    """``layers`` scalar variables; sites ``z1..z{L-1}`` are latents and ``y`` the target."""

    def __init__(self, layers: int = 4, hidden: int = 32, init_std: float = 0.1):
        super().__init__()
        if layers < 2:
            raise ValueError("ResidualChain needs at least 2 layers (a latent and the target)")
        self.res = nn.ModuleList(
            nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1)) for _ in range(layers - 1)
        )
        self.log_std = nn.Parameter(torch.full((layers - 1,), float(torch.tensor(init_std).log())))
        self.register_buffer("_lo", torch.tensor(-1.0))
        self.register_buffer("_hi", torch.tensor(1.0))

    def forward(self, n: int) -> torch.Tensor:
        z = latent("z1", Uniform(self._lo.expand(n, 1), self._hi.expand(n, 1)))
        last = len(self.res) - 1
        for i, r in enumerate(self.res):
            d = Normal(z + r(z), self.log_std[i].exp())
            z = target("y", d) if i == last else latent(f"z{i + 2}", d)
        return z
