"""Exact earth mover's distance between two samples (POT's network-simplex solver).

``EMD(X, Y) = min_{P in U(a, b)} sum_ij P_ij ||x_i - y_j||`` with uniform weights ``a = 1/n``,
``b = 1/m``: the 1-Wasserstein distance between the two empirical distributions, solved exactly
(Bonneel et al. 2011, via ``ot.emd2``), not by Sinkhorn. Used as "EMD" in Table 1 of Chen et al.
(CVPR 2023) after Xu et al. (2018), on features of images.

Example (two points moved by 2 each):
    >>> import torch
    >>> from dgmkd.metrics import emd
    >>> float(emd(torch.tensor([[0.], [1.]]), torch.tensor([[3.], [2.]])))
    2.0
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["emd"]


def emd(x: torch.Tensor, y: torch.Tensor, metric: str = "euclidean", max_iter: int = 1_000_000) -> torch.Tensor:
    """Exact EMD between samples ``x`` (n, d) and ``y`` (m, d) with uniform weights.

    ``metric``: the ground cost, ``"euclidean"`` (default: EMD is then the 1-Wasserstein
    distance) or ``"sqeuclidean"`` (then it is the squared 2-Wasserstein distance).
    """
    import ot

    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"emd needs two (n, d) sample matrices with the same d, got {tuple(x.shape)} and {tuple(y.shape)}")
    if len(x) == 0 or len(y) == 0:
        raise ValueError("emd needs at least one sample on each side")
    if metric not in ("euclidean", "sqeuclidean"):
        raise ValueError(f"metric must be 'euclidean' or 'sqeuclidean', got {metric!r}")
    xa = x.detach().double().cpu().numpy()
    ya = y.detach().double().cpu().numpy()
    cost = ot.dist(xa, ya, metric=metric)
    a = np.full(len(xa), 1.0 / len(xa))
    b = np.full(len(ya), 1.0 / len(ya))
    return torch.tensor(float(ot.emd2(a, b, cost, numItermax=max_iter)))
