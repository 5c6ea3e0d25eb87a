"""Leave-one-out 1-nearest-neighbour two-sample accuracy (Lopez-Paz & Oquab 2017; Xu et al. 2018).

Pool the two samples, label them by origin, and classify every point by the label of its nearest
*other* point. The accuracy is 0.5 when the samples come from the same distribution (the
neighbour's label is a coin flip) and approaches 1 when they are separable; values well below 0.5
mean the "generated" points copy the "real" ones (memorization). Table 1 of Chen et al. (CVPR 2023)
reports it as "1NN". Use balanced samples (``n == m``) so that 0.5 is the reference.

Example:
    >>> import torch
    >>> from dgmkd.metrics import nn1_accuracy
    >>> x = torch.tensor([[0.], [0.1]]); y = torch.tensor([[5.], [5.1]])
    >>> float(nn1_accuracy(x, y))
    1.0
"""

from __future__ import annotations

import torch

__all__ = ["nn1_accuracy"]


def nn1_accuracy(x: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Leave-one-out 1-NN accuracy of telling ``x`` (n, d) from ``y`` (m, d), Euclidean distance."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"nn1_accuracy needs two (n, d) sample matrices with the same d, got {tuple(x.shape)} and {tuple(y.shape)}")
    if len(x) < 1 or len(y) < 1 or len(x) + len(y) < 3:
        raise ValueError("nn1_accuracy needs at least one sample on each side and three in all")
    z = torch.cat([x, y]).double()
    lab = torch.cat([torch.ones(len(x)), torch.zeros(len(y))]).bool()
    correct = 0
    for i in range(0, len(z), chunk):
        d = torch.cdist(z[i:i + chunk], z)
        idx = torch.arange(i, min(i + chunk, len(z)))
        d[torch.arange(len(idx)), idx] = float("inf")  # leave one out
        nn = d.argmin(1)
        correct += int((lab[nn] == lab[idx]).sum())
    return torch.tensor(correct / len(z))
