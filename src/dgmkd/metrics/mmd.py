"""Maximum mean discrepancy with a Gaussian kernel, for low-dimensional samples.

The unbiased estimator of ``MMD^2`` (Gretton et al. 2012, Lemma 6) with a sum of Gaussian kernels
whose bandwidths are multiples of the median pairwise distance of the pooled samples. For images,
use Fréchet / kernel distances on features instead.

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

__all__ = ["mmd2"]


def mmd2(x: torch.Tensor, y: torch.Tensor, scales=(0.5, 1.0, 2.0)) -> torch.Tensor:
    """Unbiased ``MMD^2`` between samples ``x`` (n, d) and ``y`` (m, d)."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"mmd2 needs two (n, d) sample matrices with the same d, got {tuple(x.shape)} and {tuple(y.shape)}")
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError("mmd2 needs at least 2 samples on each side")
    z = torch.cat([x, y]).double()
    d2 = torch.cdist(z, z).pow(2)
    med = d2[d2 > 0].median() if (d2 > 0).any() else torch.tensor(1.0, dtype=z.dtype)
    k = sum(torch.exp(-d2 / (2 * s * s * med)) for s in scales)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    return ((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
            + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)) - 2 * kxy.mean()).float()
