"""A small CNN classifier whose penultimate layer is the feature space of the image metrics.

Inception-v3 weights cannot be downloaded here, so the Fréchet / kernel distances, EMD, MMD and
1-NN accuracy of generated images are computed on the features of a classifier the project trains
itself on the embedded digits (scikit-learn's 8x8 digits, :mod:`dgmkd.data.digits`). It is
trained deterministically (fixed seed, fixed data split) and cached, so every run and every
developer compares samples in the same space. Report these numbers as "FD (digits-CNN
features)", not as FID: the network, its training data and its feature dimension differ from
Heusel et al.'s Inception network, and values are not comparable with published FIDs.

:func:`compare` computes the whole metric suite of Table 1 of Chen et al. (CVPR 2023) between two
image samples.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

from .emd import emd
from .frechet import frechet_distance, kernel_distance
from .mmd import median_bandwidth, mmd2
from .nn1 import nn1_accuracy

__all__ = ["FeatureCNN", "train_feature_net", "digits_feature_net", "data_feature_net", "cache_dir", "compare",
           "features"]

_VERSION = "v1"


class FeatureCNN(nn.Module):
    """Conv(32)-Conv(64)-pool-Conv(64)-pool-FC(``num_features``)-FC(classes). ``forward`` returns the
    ``num_features``-dimensional penultimate (ReLU) features; :meth:`logits` the class scores.
    Inputs: float images ``(N, channels, H, W)`` in [0, 1], ``H = W = image_size`` (>= 8)."""

    def __init__(self, channels: int = 1, image_size: int = 8, num_classes: int = 10, num_features: int = 64):
        super().__init__()
        if image_size < 8 or image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4 and >= 8, got {image_size}")
        self.channels, self.image_size, self.num_features = channels, image_size, num_features
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * (image_size // 4) ** 2, num_features), nn.ReLU())
        self.head = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        want = (self.channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"FeatureCNN expects images (N, {want[0]}, {want[1]}, {want[2]}), got {tuple(x.shape)}")
        return self.body(x.to(self.head.weight.dtype))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self(x))


def train_feature_net(x: torch.Tensor, y: torch.Tensor, steps: int = 800, batch: int = 128, lr: float = 1e-3,
                      seed: int = 0, num_features: int = 64, progress: bool = False) -> FeatureCNN:
    """Train a :class:`FeatureCNN` classifier on labelled images with cross-entropy (via
    :func:`dgmkd.train`; minibatches drawn by torch's RNG seeded with ``seed``)."""
    from ..train import train

    if x.dim() != 4 or x.shape[2] != x.shape[3]:
        raise ValueError(f"x must be square images (N, C, H, H), got {tuple(x.shape)}")
    if y.shape != (len(x),):
        raise ValueError(f"y must be (N,) labels for N={len(x)} images, got {tuple(y.shape)}")
    torch.manual_seed(seed)
    net = FeatureCNN(x.shape[1], x.shape[2], int(y.max()) + 1, num_features)
    opt = torch.optim.Adam(net.parameters(), lr=lr)

    def step_fn(args, step):
        idx = torch.randint(len(x), (batch,))
        loss = F.cross_entropy(net.logits(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.detach()}

    train(step_fn, lambda: (), steps, seed=seed, progress=progress, desc="feature-cnn")
    return net.eval().requires_grad_(False)


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$DGMKD_CACHE``, else ``~/.cache/dgmkd``."""
    p = Path(path or os.environ.get("DGMKD_CACHE") or Path.home() / ".cache" / "dgmkd")
    p.mkdir(parents=True, exist_ok=True)
    return p


def digits_feature_net(cache: str | os.PathLike | None = None, retrain: bool = False) -> FeatureCNN:
    """The digits-CNN feature network, trained on the digits' train split on first use and cached
    as ``digits_cnn_<version>.pt`` (plus a JSON with its held-out accuracy) under
    :func:`cache_dir`. Deterministic: the same seed and split every time."""
    from ..data.digits import digits_split

    d = cache_dir(cache)
    path = d / f"digits_cnn_{_VERSION}.pt"
    net = FeatureCNN(1, 8, 10, 64)
    if path.is_file() and not retrain:
        try:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return net.eval().requires_grad_(False)
        except (RuntimeError, KeyError, EOFError, OSError) as e:  # a corrupt or stale cache: retrain
            print(f"dgmkd: ignoring unreadable feature-net cache {path}: {e}")
    xtr, ytr = digits_split("train")
    xte, yte = digits_split("test")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic reductions
    try:
        net = train_feature_net(xtr, ytr, seed=0)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        acc = float((net.logits(xte).argmax(1) == yte).float().mean())
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(net.state_dict(), tmp)
    os.replace(tmp, path)
    (d / f"digits_cnn_{_VERSION}.json").write_text(json.dumps({"test_accuracy": acc, "train_images": len(xtr),
                                                               "test_images": len(xte)}) + "\n")
    return net


def data_feature_net(dataset: str, x: torch.Tensor | None = None, y: torch.Tensor | None = None,
                     path: str | os.PathLike | None = None) -> tuple[FeatureCNN, str]:
    """``(feature network, its name for reports)`` of the image metrics on ``dataset``: the cached
    digits CNN (:func:`digits_feature_net`) for ``"digits"``; for a data set of the user's files
    (``svhn``, ``cifar10``, ``celeba``) a :class:`FeatureCNN` trained here on its training images
    ``x`` with labels ``y`` (:func:`train_feature_net`, seed 0), saved to ``path`` if given."""
    if dataset == "digits":
        return digits_feature_net(), "digits-CNN"
    if x is None or y is None:
        raise ValueError(f"the {dataset} feature network is trained on its images: pass x and y")
    net = train_feature_net(x, y, seed=0)
    if path is not None:
        torch.save(net.state_dict(), path)
    return net, f"{dataset}-CNN"


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
        "fd": float(frechet_distance(real, fake, net)),
        "kd": float(kernel_distance(real, fake, net)[0]),
        "emd": float(emd(fr, ff)),
        "mmd2": float(mmd2(fr, ff)),
        "mmd_bandwidth": float(median_bandwidth(fr, ff)),
        "nn1": float(nn1_accuracy(fr, ff)),
        "n_real": len(real),
        "n_fake": len(fake),
    }
