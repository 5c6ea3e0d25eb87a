"""Fréchet distance and kernel distance on the features of a user-chosen network (torchmetrics).

``FD = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^{1/2})`` between Gaussians fitted to the
features of real and generated images (Heusel et al. 2017), and the kernel distance (KID:
unbiased ``MMD^2`` with the cubic polynomial kernel, averaged over random subsets; Bińkowski et
al. 2018). Both are computed by torchmetrics' ``FrechetInceptionDistance`` /
``KernelInceptionDistance`` with ``feature=`` our own ``nn.Module`` (any module mapping images
``(N, C, H, W)`` float in [0, 1] to ``(N, d)``; see :mod:`dgmkd.metrics.features`). Inception
weights cannot be downloaded here, so what these return is *not* FID unless the feature module is
Inception: report it as "FD (<network> features)". :func:`inception_fid` computes the real FID
from a local Inception weight file (needs ``torch-fidelity``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

__all__ = ["frechet_distance", "frechet_features", "kernel_distance", "inception_fid"]


def frechet_features(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two sets of feature vectors ``(N, d)``: the
    squared 2-Wasserstein distance of :func:`dgmkd.divergences.w2_gaussian`, in float64.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> a, b = torch.randn(4000, 3, generator=g), torch.randn(4000, 3, generator=g) + 1.0
        >>> abs(frechet_features(a, b) - 3.0) < 0.2  # |mu_a - mu_b|^2 = 3, equal covariances
        True
    """
    from ..divergences import w2_gaussian

    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_features needs two (N, d) feature sets of one width, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("frechet_features needs at least 2 samples on each side")
    return float(w2_gaussian(a.mean(0), torch.cov(a.T).reshape(a.shape[1], -1), b.mean(0),
                             torch.cov(b.T).reshape(b.shape[1], -1)))


def _check_images(name, x):
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"{name} must be an image batch (N, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not torch.is_floating_point(x):
        raise ValueError(f"{name} must be float images in [0, 1], got dtype {x.dtype}")


def _feed(metric, real, fake, batch):
    for i in range(0, len(real), batch):
        metric.update(real[i:i + batch].float(), real=True)
    for i in range(0, len(fake), batch):
        metric.update(fake[i:i + batch].float(), real=False)


class _Features(nn.Module):
    """Wraps a feature module with the ``num_features`` torchmetrics reads (otherwise it probes
    the module with a 3x299x299 dummy image, which our small-image networks cannot take)."""

    def __init__(self, net: nn.Module, num_features: int):
        super().__init__()
        self.net, self.num_features = net, num_features

    def forward(self, x):
        p = next(self.net.parameters(), None)
        return self.net(x if p is None else x.to(p.dtype))


def _as_feature(feature: nn.Module, probe: torch.Tensor, copy_it: bool = False) -> nn.Module:
    if not isinstance(feature, nn.Module):
        raise TypeError(f"feature must be an nn.Module mapping images to (N, d) features, got {type(feature).__name__}")
    feature.eval()
    out = feature(probe[:1].float())
    if out.dim() != 2:
        raise ValueError(f"the feature module must return (N, d) features, got shape {tuple(out.shape)}")
    return _Features(copy.deepcopy(feature) if copy_it else feature, out.shape[1]).eval()


@torch.no_grad()
def frechet_distance(real: torch.Tensor, fake: torch.Tensor, feature: nn.Module, batch: int = 500) -> torch.Tensor:
    """Fréchet distance between the ``feature`` statistics of ``real`` and ``fake`` images
    (:func:`frechet_features` of their features).

    Computed in float64. Biased upward for small samples (the trace term of two independent
    samples of one distribution is ``O(d / n)``), so compare values at equal sample counts.
    """
    _check_images("real", real)
    _check_images("fake", fake)
    if len(real) < 2 or len(fake) < 2:
        raise ValueError("frechet_distance needs at least 2 images on each side")
    net = _as_feature(feature, real)

    def feats(x):
        return torch.cat([net(x[i:i + batch].float()) for i in range(0, len(x), batch)])

    return torch.tensor(frechet_features(feats(real), feats(fake)), dtype=torch.float32)


@torch.no_grad()
def kernel_distance(real: torch.Tensor, fake: torch.Tensor, feature: nn.Module, subsets: int = 50,
                    subset_size: int | None = None, batch: int = 500, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel (KID-style) distance ``(mean, std)`` over ``subsets`` random subsets of
    ``subset_size`` (default ``min(n_real, n_fake, 1000)``). The subsets are drawn with a fixed
    ``seed`` so the value is deterministic."""
    import warnings

    from torchmetrics.image.kid import KernelInceptionDistance

    _check_images("real", real)
    _check_images("fake", fake)
    size = subset_size or min(len(real), len(fake), 1000)
    if size < 2 or size > min(len(real), len(fake)):
        raise ValueError(f"subset_size must be in [2, {min(len(real), len(fake))}], got {size}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        m = KernelInceptionDistance(feature=_as_feature(feature, real), subsets=subsets, subset_size=size,
                                    normalize=True)
    _feed(m, real, fake, batch)
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        mean, std = m.compute()
    finally:
        torch.set_rng_state(state)
    return mean.float(), std.float()


@torch.no_grad()
def inception_fid(real: torch.Tensor, fake: torch.Tensor, weights_path: str | Path, batch: int = 100) -> torch.Tensor:
    """FID with Inception-v3 (2048-d pool features) from a *local* weight file (the
    ``pt_inception-2015-12-05`` file torch-fidelity uses); RGB images in [0, 1]."""
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights {str(path)!r} not found; nothing is downloaded here")
    try:
        import torch_fidelity  # noqa: F401
    except ImportError as e:
        raise ImportError("inception_fid needs the torch-fidelity package (pip install torch-fidelity)") from e
    from torchmetrics.image.fid import FrechetInceptionDistance

    _check_images("real", real)
    _check_images("fake", fake)
    if real.shape[1] != 3 or fake.shape[1] != 3:
        raise ValueError("Inception FID needs RGB images (N, 3, H, W)")
    m = FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=str(path))
    _feed(m, real, fake, batch)
    return m.compute().float()
