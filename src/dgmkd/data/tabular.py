"""Small real tabular data sets that work offline, split and standardized for density estimation.

* ``faithful`` — Old Faithful (2-d, 272 rows; :mod:`dgmkd.data.faithful`);
* ``wine`` — scikit-learn's bundled wine recognition data (13-d, 178 rows);
* ``breast_cancer`` — scikit-learn's bundled Wisconsin diagnostic breast cancer data (30-d, 569
  rows; ``log1p`` of the features first, they are positive and skewed);
* ``patches`` — 8x8 natural-image patches, 63-d (:mod:`dgmkd.data.patches`);
* the UCI flow benchmarks ``power``, ``gas``, ``hepmass``, ``miniboone``, ``bsds300`` from the
  user's files under ``root`` (:mod:`dgmkd.data.uci`, MAF's preprocessing and splits).

Splits are fixed random permutations (``seed``): 20 % test, then 10 % of the rest validation.
Standardized by the training split's mean and standard deviation (as Papamakarios et al. do for
the UCI sets). scikit-learn's California housing is *not* bundled (it downloads), so it is not
offered.

Example:
    >>> from dgmkd.data.tabular import load_tabular
    >>> tr, va, te = load_tabular("wine")
    >>> tr.shape[1], len(tr) + len(va) + len(te)
    (13, 178)
"""

from __future__ import annotations

import numpy as np
import torch

from .uci import NAMES as UCI_NAMES

__all__ = ["load_tabular", "NAMES", "UCI_NAMES"]

NAMES = ("faithful", "wine", "breast_cancer", "patches")


def _split_standardize(x: np.ndarray, seed: int):
    rng = np.random.default_rng(seed)
    x = x[rng.permutation(len(x))]
    n_test = int(round(0.2 * len(x)))
    test, rest = x[:n_test], x[n_test:]
    n_val = int(round(0.1 * len(rest)))
    val, train = rest[:n_val], rest[n_val:]
    mu, sd = train.mean(0), train.std(0)
    sd[sd == 0] = 1.0
    return tuple(torch.from_numpy(((a - mu) / sd).astype(np.float32)) for a in (train, val, test))


def load_tabular(name: str, seed: int = 0, root: str = "", **kw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train, val, test)`` float32 tensors ``(n, d)`` of data set ``name`` (:data:`NAMES`, or
    :data:`UCI_NAMES` read from the directory ``root``). ``kw`` go to
    :func:`dgmkd.data.patches.load_patches` for ``patches``."""
    if name in UCI_NAMES:
        from .uci import load_uci

        if not root:
            raise ValueError(f"the UCI data set {name!r} is read from local files: give their directory (root)")
        return load_uci(name, root)
    if name == "faithful":
        from .faithful import load_faithful

        return _split_standardize(load_faithful(torch.float64).numpy(), seed)
    if name == "wine":
        from sklearn.datasets import load_wine

        return _split_standardize(load_wine().data.astype(np.float64), seed)
    if name == "breast_cancer":
        from sklearn.datasets import load_breast_cancer

        return _split_standardize(np.log1p(load_breast_cancer().data.astype(np.float64)), seed)
    if name == "patches":
        from .patches import load_patches

        return load_patches(seed=seed, **kw)
    raise ValueError(f"unknown tabular data set {name!r}; choose one of {', '.join(NAMES + UCI_NAMES)}")
