"""The feature networks of the image metrics: trained here, once, and cached.

:mod:`dgmkd.metrics.features` defines the network (:class:`~dgmkd.metrics.features.FeatureCNN`)
and the metric suite on its features; training it is the business of this module, which sits
outside :mod:`dgmkd.metrics` so that the metrics never import training code.

* :func:`digits_feature_net` — the digits CNN every experiment on the 8x8 digits measures with:
  trained deterministically (seed 0, the digits' fixed train split) on first use and cached as
  ``digits_cnn_<version>.pt`` (plus a JSON with its held-out accuracy) under :func:`cache_dir`,
  so every run and every developer compares samples in the same space.
* :func:`data_feature_net` — that network for ``"digits"``; for a data set of the user's files a
  :class:`FeatureCNN` trained on its training images and labels (saved in the run directory).
* :func:`train_feature_net` — cross-entropy training through :func:`dgmkd.train.fit`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from .metrics.features import FeatureCNN
from .train import fit, minibatches

__all__ = ["train_feature_net", "digits_feature_net", "digits_accuracy", "data_feature_net", "cache_dir"]

_VERSION = "v1"


def train_feature_net(x: torch.Tensor, y: torch.Tensor, steps: int = 800, batch: int = 128, lr: float = 1e-3,
                      seed: int = 0, num_features: int = 64, progress: bool = False) -> FeatureCNN:
    """Train a :class:`FeatureCNN` classifier on labelled images with cross-entropy (Adam, minibatches
    drawn by :func:`dgmkd.train.minibatches`); ``seed`` fixes the initialization and the batches."""
    if x.dim() != 4 or x.shape[2] != x.shape[3]:
        raise ValueError(f"x must be square images (N, C, H, H), got {tuple(x.shape)}")
    if y.shape != (len(x),):
        raise ValueError(f"y must be (N,) labels for N={len(x)} images, got {tuple(y.shape)}")
    torch.manual_seed(seed)
    net = FeatureCNN(x.shape[1], x.shape[2], int(y.max()) + 1, num_features)
    fit(lambda a, step: F.cross_entropy(net.logits(a[0]), a[1]), net, minibatches(x, y, batch=batch), steps,
        lr=lr, seed=seed, progress=progress, desc="feature-cnn")
    return net.eval().requires_grad_(False)


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$DGMKD_CACHE``, else ``~/.cache/dgmkd``."""
    p = Path(path or os.environ.get("DGMKD_CACHE") or Path.home() / ".cache" / "dgmkd")
    p.mkdir(parents=True, exist_ok=True)
    return p


def digits_accuracy(cache: str | os.PathLike | None = None) -> float | None:
    """The cached digits CNN's held-out accuracy (``None`` before it is trained)."""
    p = cache_dir(cache) / f"digits_cnn_{_VERSION}.json"
    try:
        return float(json.loads(p.read_text())["test_accuracy"]) if p.is_file() else None
    except (ValueError, KeyError, TypeError):  # an unreadable cache (e.g. random bytes) is not an accuracy
        return None


def digits_feature_net(cache: str | os.PathLike | None = None, retrain: bool = False) -> FeatureCNN:
    """The digits-CNN feature network, trained on the digits' train split on first use and cached
    (see the module docstring). Deterministic: the same seed and split every time."""
    from .data.digits import digits_split

    d = cache_dir(cache)
    path = d / f"digits_cnn_{_VERSION}.pt"
    net = FeatureCNN(1, 8, 10, 64)
    if path.is_file() and not retrain:
        try:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return net.eval().requires_grad_(False)
        except Exception as e:  # a corrupt, truncated or stale cache (any unpickling error): retrain
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
    (``mnist-idx``, ``svhn``, ``cifar10``, ``celeba``) a :class:`FeatureCNN` trained here on its
    training images ``x`` with labels ``y`` (:func:`train_feature_net`, seed 0), saved to ``path``."""
    if dataset == "digits":
        return digits_feature_net(), "digits-CNN"
    if x is None or y is None:
        raise ValueError(f"the {dataset} feature network is trained on its images: pass x and y")
    net = train_feature_net(x, y, seed=0)
    if path is not None:
        torch.save(net.state_dict(), path)
    return net, f"{dataset}-CNN"
