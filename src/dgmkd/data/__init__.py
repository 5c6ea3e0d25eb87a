"""Datasets: embedded offline defaults and readers for files users bring (nothing downloads at run time).

Other modules here (Old Faithful, MNIST-1D, IAM-OnDB) are imported from their own modules. The image
loaders below return images as a float tensor ``(N, C, H, W)`` in ``[0, 1]`` (and labels where the
format has them), so the same experiment code runs on any of them.

* :mod:`.digits` — scikit-learn's bundled 8x8 handwritten digits (the embedded default).
* :mod:`.svhn` — SVHN cropped digits, ``train_32x32.mat`` / ``test_32x32.mat`` (scipy.io).
* :mod:`.cifar` — CIFAR-10 binary batches (``data_batch_1.bin`` ...), parsed byte-wise, never
  unpickled.
* :mod:`.celeba` — CelebA aligned image folder plus ``list_attr_celeba.txt``.
"""

from .errors import DataFormatError
from .digits import load_digits, digits_split
from .svhn import load_svhn
from .cifar import load_cifar10
from .celeba import load_celeba

__all__ = ["load_digits", "digits_split", "load_svhn", "load_cifar10", "load_celeba", "DataFormatError",
           "load_images"]


def load_images(name: str, root: str | None = None, split: str = "train", **kw):
    """Images ``(N, C, H, W)`` in [0, 1] of a data set by name (``digits``, ``svhn``, ``cifar10``,
    ``celeba``); ``root`` is the folder holding the user's files (not needed for ``digits``)."""
    if name == "digits":
        return digits_split(split, **kw)[0]
    if root is None:
        raise ValueError(f"data set {name!r} needs root= (a folder with its files); nothing is downloaded")
    if name == "svhn":
        return load_svhn(root, split, **kw)[0]
    if name == "cifar10":
        return load_cifar10(root, split, **kw)[0]
    if name == "celeba":
        return load_celeba(root, split=split, **kw)[0]
    raise ValueError(f"unknown data set {name!r}; choose digits, svhn, cifar10 or celeba")
