"""Two-part splits of the embedded digits for continual learning (Chen et al. 2023, §4.4).

The paper splits CelebA by an attribute (Female -> Male, No Beard -> Beard, No Eyeglasses ->
Eyeglasses); here three splits of the embedded digits (the 8x8 ``"digits"`` or the 28x28
``"mnist"``, ``dataset=``) play that role:

* ``"0-4>5-9"``: digits 0–4 (old) then 5–9 (new);
* ``"even>odd"``: even digits (old) then odd digits (new);
* ``"thin>thick"``: strokes thinner than the median ink mass (old) then the rest (new). The ink
  mass is the sum of an image's pixel values; the median is taken over the *training* split and
  the same threshold is applied to the test split, so both are split by one rule.

Each part is a subset of :func:`dgmkd.data.embedded_split` (same fixed train/test split); the two
parts partition it. CelebA users get the paper's attribute splits (:data:`CELEBA_SPLITS`:
``"Female>Male"``, ``"No_Beard>Beard"``, ``"No_Eyeglasses>Eyeglasses"``) of the images
:func:`dgmkd.data.load_celeba` reads from their own files (:func:`celeba_split`,
:func:`attribute_split`).

Example:
    >>> from dgmkd.data.splits import continual_split
    >>> (xo, yo), (xn, yn) = continual_split("even>odd", "train")
    >>> bool((yo % 2 == 0).all()), bool((yn % 2 == 1).all()), len(xo) + len(xn)
    (True, True, 1438)
"""

from __future__ import annotations

import torch

__all__ = ["SPLITS", "CELEBA_SPLITS", "continual_split", "ink_threshold", "split_mask", "attribute_split",
           "celeba_split"]

SPLITS = ("0-4>5-9", "even>odd", "thin>thick")
# CelebA split name -> (attribute column, negate): the new part is the images whose column is 1
# (negate: is 0), the old part the rest (see attribute_split)
CELEBA_SPLITS = {"Female>Male": ("Male", False), "No_Beard>Beard": ("No_Beard", True),
                 "No_Eyeglasses>Eyeglasses": ("Eyeglasses", False)}


def ink_threshold(binarize: bool = False, dataset: str = "digits") -> float:
    """The median ink mass (sum of pixels) of the training split of ``dataset`` (digits or mnist)."""
    from . import embedded_split

    x, _ = embedded_split(dataset, "train", binarize=binarize)
    return float(x.flatten(1).sum(-1).median())


def split_mask(name: str, x: torch.Tensor, y: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
    """Boolean ``(N,)`` mask of the *new* part (condition 1) of images ``x`` with labels ``y``."""
    if name == "0-4>5-9":
        return y >= 5
    if name == "even>odd":
        return y % 2 == 1
    if name == "thin>thick":
        if threshold is None:
            raise ValueError("the thin>thick split needs the ink threshold (see ink_threshold)")
        return x.flatten(1).sum(-1) >= threshold
    raise ValueError(f"unknown split {name!r}; choose from {SPLITS}")


def continual_split(name: str, split: str = "train", binarize: bool = False, dataset: str = "digits"):
    """``((x_old, y_old), (x_new, y_new))``: the two parts of the ``split`` ("train" or "test") of
    the embedded ``dataset`` (digits or mnist) under the continual-learning split ``name`` (one of
    :data:`SPLITS`)."""
    from . import embedded_split

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    x, y = embedded_split(dataset, split, binarize=binarize)
    thr = ink_threshold(binarize, dataset) if name == "thin>thick" else None
    new = split_mask(name, x, y, thr)
    return (x[~new], y[~new]), (x[new], y[new])


def attribute_split(x: torch.Tensor, attributes: torch.Tensor, names: list[str], attribute: str,
                    negate: bool = False):
    """CelebA-style split: ``(x_old, x_new)`` with ``x_new`` the images whose column ``attribute``
    is 1 (``negate=True``: is 0). ``attributes`` is the 0/1 matrix of :func:`dgmkd.data.load_celeba`
    and ``names`` its column names. The paper's three: ``"Male"`` (Female -> Male), ``"No_Beard",
    negate=True`` (No Beard -> Beard), ``"Eyeglasses"`` (No Eyeglasses -> Eyeglasses)."""
    if attribute not in names:
        raise KeyError(f"attribute {attribute!r} not among {names}")
    new = attributes[:, names.index(attribute)].bool()
    if negate:
        new = ~new
    return x[~new], x[new]


def celeba_split(name: str, x: torch.Tensor, attributes: torch.Tensor, names: list[str]):
    """``(x_old, x_new)``: the CelebA split ``name`` (one of :data:`CELEBA_SPLITS`) of images ``x``
    with the 0/1 ``attributes`` and column ``names`` of :func:`dgmkd.data.load_celeba`.

    Example:
        >>> x, attrs = torch.arange(3.0), torch.tensor([[1], [0], [1]])
        >>> [t.tolist() for t in celeba_split("No_Beard>Beard", x, attrs, ["No_Beard"])]
        [[0.0, 2.0], [1.0]]
    """
    if name not in CELEBA_SPLITS:
        raise ValueError(f"unknown CelebA split {name!r}; choose from {tuple(CELEBA_SPLITS)}")
    attribute, negate = CELEBA_SPLITS[name]
    return attribute_split(x, attributes, names, attribute, negate=negate)
