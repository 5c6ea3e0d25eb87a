"""A small CNN classifier whose penultimate layer is the feature space of the image metrics.

Inception-v3 weights cannot be downloaded here, so the Fréchet / kernel distances, EMD, MMD and
1-NN accuracy of generated images are computed on the features of a classifier the project trains
itself on the embedded digits (scikit-learn's 8x8 digits, :mod:`dgmkd.data.digits`). It is
trained deterministically (fixed seed, fixed data split) and cached by :mod:`dgmkd.feature_net`
(the training lives there, outside the metrics), so every run and every developer compares samples
in the same space. Report these numbers as "FD (digits-CNN
features)", not as FID: the network, its training data and its feature dimension differ from
Heusel et al.'s Inception network, and values are not comparable with published FIDs.

:func:`compare` computes the whole metric suite of Table 1 of Chen et al. (CVPR 2023) between two
image samples.
"""

from __future__ import annotations

import torch
from torch import nn

from .emd import emd
from .frechet import frechet_features, kernel_distance
from .mmd import median_bandwidth, mmd2
from .nn1 import nn1_accuracy

__all__ = ["FeatureCNN", "compare", "features"]


class FeatureCNN(nn.Module):
    """Conv(32)-Conv(64)-pool-Conv(64)-pool-FC(``num_features``)-FC(classes). ``forward`` returns the
    ``num_features``-dimensional penultimate (ReLU) features; :meth:`logits` the class scores.
    Inputs: float images ``(N, channels, H, W)`` in [0, 1], ``H = W = image_size`` (>= 8).

    ``stem_stride=2`` makes the first convolution strided (28x28 -> 14x14), so the two wide
    convolutions run on a quarter of the pixels: at 28x28 on one CPU thread that is ~4x fewer
    multiply-adds for the same depth (the metrics embed thousands of samples per evaluation). The
    8x8 digits net keeps stride 1.

    Example:
        >>> import torch
        >>> net = FeatureCNN(1, 28, 10, 64, stem_stride=2)
        >>> tuple(net(torch.rand(2, 1, 28, 28)).shape)
        (2, 64)
    """

    def __init__(self, channels: int = 1, image_size: int = 8, num_classes: int = 10, num_features: int = 64,
                 stem_stride: int = 1):
        super().__init__()
        if image_size < 8 or image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4 and >= 8, got {image_size}")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        self.channels, self.image_size, self.num_features = channels, image_size, num_features
        side = image_size // stem_stride // 4  # floor pooling, as nn.MaxPool2d(2) does
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, stride=stem_stride, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * side ** 2, num_features), nn.ReLU())
        self.head = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        want = (self.channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"FeatureCNN expects images (N, {want[0]}, {want[1]}, {want[2]}), got {tuple(x.shape)}")
        return self.body(x.to(self.head.weight.dtype))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self(x))


@torch.no_grad()
def features(net: nn.Module, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """``net`` features of images ``x``, computed in batches."""
    return torch.cat([net(x[i:i + batch]) for i in range(0, len(x), batch)]).double()


def compare(real: torch.Tensor, fake: torch.Tensor, net: nn.Module) -> dict[str, float]:
    """The Table-1 metric suite between two image samples, on ``net`` features.

    Returns ``fd`` (Fréchet distance), ``kd`` (kernel distance, mean over subsets), ``emd`` (exact,
    Euclidean ground cost), ``mmd2`` (unbiased, Gaussian kernel, median-heuristic bandwidth
    ``mmd_bandwidth``, scales 0.5/1/2), ``nn1`` (leave-one-out 1-NN accuracy, 0.5 ideal) and the
    sample counts ``n_real`` / ``n_fake``.
    """
    fr, ff = features(net, real), features(net, fake)
    return {
        "fd": frechet_features(fr, ff),  # = frechet_distance(real, fake, net) without embedding twice
        "kd": float(kernel_distance(real, fake, net)[0]),
        "emd": float(emd(fr, ff)),
        "mmd2": float(mmd2(fr, ff)),
        "mmd_bandwidth": float(median_bandwidth(fr, ff)),
        "nn1": float(nn1_accuracy(fr, ff)),
        "n_real": len(real),
        "n_fake": len(fake),
    }
