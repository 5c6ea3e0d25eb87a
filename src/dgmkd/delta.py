"""A point mass, for outputs that are deterministic functions of their parents.

A GAN generator's output or a network's prediction is a target with a degenerate distribution:
with a distance as the divergence, the surrogate loss at a ``Delta`` target is output
distillation (Eq. 9, Chen et al. 2023, §3.5), since the p-Wasserstein distance between point
masses is the distance between their locations.

Example:
    >>> import torch
    >>> from dgmkd.delta import Delta
    >>> d = Delta(torch.tensor([1.0, 2.0]), event_dim=1)
    >>> d.sample().tolist(), d.event_shape
    ([1.0, 2.0], torch.Size([2]))
"""

from __future__ import annotations

import torch
from torch.distributions import Distribution, constraints

from . import reparam

__all__ = ["Delta"]


class Delta(Distribution):
    """The point mass at ``v``; the rightmost ``event_dim`` dimensions are the event."""

    arg_constraints = {"v": constraints.real}
    has_rsample = True

    def __init__(self, v: torch.Tensor, event_dim: int = 0, validate_args=None):
        if event_dim > v.dim():
            raise ValueError(f"event_dim {event_dim} exceeds the value's {v.dim()} dimensions")
        self.v = v
        split = v.dim() - event_dim
        super().__init__(v.shape[:split], v.shape[split:], validate_args=validate_args)

    @property
    def mean(self):
        return self.v

    @property
    def variance(self):
        return torch.zeros_like(self.v)

    def rsample(self, sample_shape=torch.Size()):
        return self.v.expand(torch.Size(sample_shape) + self.v.shape)

    def log_prob(self, value):
        lp = torch.where(value == self.v, 0.0, -torch.inf).to(self.v.dtype)
        n = len(self.event_shape)
        return lp.flatten(-n).sum(-1) if n else lp

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return Delta(self.v.expand(batch_shape + self.event_shape), len(self.event_shape))


# as a latent, a point mass needs no noise: an empty one keeps the machinery uniform
reparam.register(Delta, lambda d: torch.empty(d.batch_shape + (0,), device=d.v.device),
                 lambda d, eps: d.v, law="none")
