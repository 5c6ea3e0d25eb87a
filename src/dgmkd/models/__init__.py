"""Models written with dgmkd sites. They know nothing of distillation: outside handlers each is a
plain sampler."""

from .chain import ResidualChain
from .mlp_dgm import MLPDGM

__all__ = ["MLPDGM", "ResidualChain"]
