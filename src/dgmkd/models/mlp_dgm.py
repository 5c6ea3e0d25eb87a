"""A stack of Gaussian latent layers with MLP conditionals and a Gaussian target.

``z_1 ~ N(0, I)``, ``z_{i+1} ~ N(mu_i(z_i), diag sigma_i(z_i)^2)``, ``y ~ N(mu_y(z_L), out_std^2 I)``:
the simplest deep DGM with several latent layers, used by the demo and by the core benchmark.

Example:
    >>> import torch
    >>> from dgmkd.models import MLPDGM
    >>> m = MLPDGM(latent_dims=(2, 3), hidden=16, out_dim=2)
    >>> m(5).shape
    torch.Size([5, 2])
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Independent, Normal

from ..sites import latent, target
from ..saving import buildable

__all__ = ["MLPDGM"]


class _Gaussian(nn.Module):
    """``x -> (loc, scale)`` by a one-hidden-layer MLP."""

    def __init__(self, d_in, d_out, hidden, min_std):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, 2 * d_out))
        self.min_std = min_std

    def forward(self, x):
        loc, s = self.net(x).chunk(2, -1)
        return loc, nn.functional.softplus(s) + self.min_std


@buildable
class MLPDGM(nn.Module):
    """Gaussian latent layers ``z1 -> ... -> zL -> y`` with MLP conditionals (site names
    ``z1..zL`` and ``y``). ``model(n)`` samples ``n`` outputs."""

    def __init__(self, latent_dims=(2, 2), hidden: int = 64, out_dim: int = 2, out_std: float = 0.1,
                 min_std: float = 1e-3):
        super().__init__()
        if not latent_dims:
            raise ValueError("MLPDGM needs at least one latent layer")
        self.latent_dims = tuple(latent_dims)
        self.layers = nn.ModuleList(
            _Gaussian(a, b, hidden, min_std) for a, b in zip(self.latent_dims[:-1], self.latent_dims[1:])
        )
        self.out = nn.Sequential(nn.Linear(self.latent_dims[-1], hidden), nn.Tanh(), nn.Linear(hidden, out_dim))
        self.out_std = out_std
        self.register_buffer("_zero", torch.zeros(()))

    def forward(self, n: int) -> torch.Tensor:
        z = latent("z1", Independent(Normal(self._zero.expand(n, self.latent_dims[0]), 1.0), 1))
        for i, layer in enumerate(self.layers):
            loc, scale = layer(z)
            z = latent(f"z{i + 2}", Independent(Normal(loc, scale), 1))
        return target("y", Independent(Normal(self.out(z), self.out_std), 1))
