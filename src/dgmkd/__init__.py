"""dgmkd — knowledge distillation for deep directed graphical models.

A model names its random variables with :func:`latent`, :func:`target` and
:func:`deterministic`; :func:`couple` runs a teacher and a student with coupled randomness; the
losses in :mod:`dgmkd.losses` (surrogate, latent, unified, local — Chen et al., CVPR 2023) are
small functions of the result; :func:`distill` is the one training loop.
"""

from . import checkpoint, discrete_grad, divergences, handlers, losses, reparam
from .coupling import Coupling, SitePair, couple
from .delta import Delta
from .handlers import SiteMismatchError
from .reparam import UnsupportedDistributionError
from .sites import deterministic, latent, target
from .train import NonFiniteLossError, distill, train

__version__ = "0.1.0"

__all__ = [
    "latent", "target", "deterministic", "couple", "Delta", "Coupling", "SitePair", "distill", "train",
    "losses", "divergences", "reparam", "handlers", "checkpoint", "discrete_grad",
    "SiteMismatchError", "UnsupportedDistributionError", "NonFiniteLossError",
]
