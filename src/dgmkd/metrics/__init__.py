"""Evaluation metrics (sample-based distances between teacher and student, or model and data).

Image metrics of Table 1 (Chen et al., CVPR 2023) on the features of a cached digits CNN
(:mod:`.features`; trained by :mod:`dgmkd.feature_net`): Fréchet distance (the Gaussian W2 of the
features) and kernel distance (torchmetrics) in :mod:`.frechet`, exact EMD
(:mod:`.emd`, POT), MMD (:mod:`.mmd`), leave-one-out 1-NN accuracy (:mod:`.nn1`).
"""

from .mmd import median_bandwidth, mmd2
from .grid_kl import Grid, discrete_kl, grid_from_samples, propagate_continuous, propagate_discrete
from .kl_dre import DREResult, kl_dre
from .emd import emd
from .nn1 import nn1_accuracy
from .frechet import frechet_distance, inception_fid, kernel_distance
from .features import FeatureCNN, compare

__all__ = ["mmd2"]
__all__ += ["kl_dre", "DREResult", "Grid", "grid_from_samples", "propagate_continuous", "propagate_discrete",
            "discrete_kl"]
__all__ += ["median_bandwidth", "emd", "nn1_accuracy", "frechet_distance", "kernel_distance", "inception_fid",
            "FeatureCNN", "compare"]
