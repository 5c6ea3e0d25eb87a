"""Evaluation metrics (sample-based distances between teacher and student)."""

from .mmd import mmd2
from .grid_kl import Grid, discrete_kl, grid_from_samples, propagate_continuous, propagate_discrete
from .kl_dre import DREResult, kl_dre

__all__ = ["mmd2"]
__all__ += ["kl_dre", "DREResult", "Grid", "grid_from_samples", "propagate_continuous", "propagate_discrete",
            "discrete_kl"]
