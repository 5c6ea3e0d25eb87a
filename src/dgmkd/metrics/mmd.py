"""Maximum mean discrepancy with a Gaussian kernel.

The unbiased estimator of ``MMD^2`` (Gretton et al. 2012, Lemma 6) with a sum of Gaussian kernels
``k(a, b) = sum_s exp(-||a - b||^2 / (2 s^2 h^2))``. By default the bandwidth ``h^2`` is the median
of the pooled samples' nonzero squared pairwise distances (the median heuristic) and
``s in (0.5, 1, 2)``; pass ``bandwidth=h`` to fix it. :func:`median_bandwidth` returns the ``h``
the heuristic picks, so a report can state it. For images, apply it to features (see
:mod:`dgmkd.metrics.features`).

Example:
    >>> import torch
    >>> from dgmkd.metrics import mmd2
    >>> g = torch.Generator().manual_seed(0)
    >>> x, y = torch.randn(500, 2, generator=g), torch.randn(500, 2, generator=g)
    >>> abs(float(mmd2(x, y))) < 0.01
    True
"""

from __future__ import annotations

import torch

__all__ = ["mmd2", "median_bandwidth"]


def _check(x, y):
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"mmd2 needs two (n, d) sample matrices with the same d, got {tuple(x.shape)} and {tuple(y.shape)}")
    if len(x) < 2 or len(y) < 2:
        raise ValueError("mmd2 needs at least 2 samples on each side")


def median_bandwidth(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The median-heuristic bandwidth ``h``: the square root of the median nonzero squared
    distance between points of the pooled sample (1 if all points coincide)."""
    _check(x, y)
    z = torch.cat([x, y]).double()
    d2 = torch.cdist(z, z).pow(2)
    med = d2[d2 > 0].median() if (d2 > 0).any() else torch.tensor(1.0, dtype=z.dtype)
    return med.sqrt()


def mmd2(x: torch.Tensor, y: torch.Tensor, scales=(0.5, 1.0, 2.0), bandwidth: float | torch.Tensor | None = None) -> torch.Tensor:
    """Unbiased ``MMD^2`` between samples ``x`` (n, d) and ``y`` (m, d); ``bandwidth`` ``h``
    defaults to :func:`median_bandwidth`."""
    _check(x, y)
    n, m = len(x), len(y)
    z = torch.cat([x, y]).double()
    d2 = torch.cdist(z, z).pow(2)
    if bandwidth is None:
        med = d2[d2 > 0].median() if (d2 > 0).any() else torch.tensor(1.0, dtype=z.dtype)
    else:
        if not float(bandwidth) > 0:
            raise ValueError(f"bandwidth must be positive, got {bandwidth}")
        med = torch.as_tensor(float(bandwidth), dtype=z.dtype) ** 2
    k = sum(torch.exp(-d2 / (2 * s * s * med)) for s in scales)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    return ((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
            + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)) - 2 * kxy.mean()).float()
