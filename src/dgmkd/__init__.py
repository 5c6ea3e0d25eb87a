"""dgmkd — knowledge distillation for deep directed graphical models.

A model names its random variables with :func:`latent`, :func:`target` and
:func:`deterministic`; :func:`couple` runs a teacher and a student with coupled randomness; the
losses in :mod:`dgmkd.losses` (surrogate, latent, unified, local — Chen et al., CVPR 2023) are
small functions of the result; :func:`distill` is the one training loop.
"""

from . import checkpoint, discrete_grad, divergences, handlers, losses, maps, reparam
from .coupling import Coupling, SitePair, couple
from .delta import Delta
from .handlers import SiteMismatchError
from .reparam import UnsupportedDistributionError
from .saving import load, save
from .sites import deterministic, latent, target
from . import train
from .train import NonFiniteLossError, distill, fit, loop
from .methods.flow_kd import distill_flow

__version__ = "0.1.0"

__all__ = [
    "latent", "target", "deterministic", "couple", "Delta", "Coupling", "SitePair", "distill", "fit", "loop",
    "save", "load", "distill_flow",
    "train",
    "losses", "divergences", "reparam", "maps", "handlers", "checkpoint", "discrete_grad",
    "SiteMismatchError", "UnsupportedDistributionError", "NonFiniteLossError",
]
