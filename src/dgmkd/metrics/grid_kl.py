"""Exact marginal KL of scalar chains, by propagating the marginals layer by layer.

The toy of Chen et al. (2023, §3.2 / Fig. 2 and §4.1 / Fig. 5) measures the error of a distilled
student by ``KL(p_T(y) || p_S(y))`` between the teacher's and the student's marginals of the last
layer, which the paper estimated by density-ratio estimation. In a chain of *scalar* variables
that marginal is computable: ``p(z_{i+1}) = ∫ p(z_{i+1} | z_i) p(z_i) dz_i`` is a 1-d integral per
layer (a sum for integer-valued chains), so this module computes it deterministically and the
sample-based estimate (:mod:`dgmkd.metrics.kl_dre`) can be checked against it.

Continuous chains (:func:`propagate_continuous`) are discretized by **finite volumes** on a uniform
grid of cells: the marginal of each layer is a vector of cell masses; the mass of cell ``k`` is
placed at its centre ``x_k`` and moved into cell ``j`` with the exact Gaussian cell probability
``Phi((b_{j+1} - m_k)/s_k) - Phi((b_j - m_k)/s_k)``. Mass that lands outside the grid is lost and
reported as ``1 - captured mass``; no renormalization hides it. The KL between the two final cell
mass vectors is the KL of the quantized variables: by the data-processing inequality it is at most
the continuous KL, and it converges to it as the cells shrink (error ``O(h^2)`` for smooth
densities). Cells must be small compared with the conditional standard deviations; the grid is
chosen from samples of both models (:func:`grid_from_samples`), because a student's hidden values
may spread further than the teacher's.

Integer-valued chains (:func:`propagate_discrete`) are exact: the pmf over the support ``0..N`` is
pushed through the transition matrix ``P(z_{i+1} = j | z_i = k)``.

For the chain models of :mod:`dgmkd.models.toy_chain` (``layers``, ``conditional(i, z)``),
:func:`gaussian_chain_kl` and :func:`binomial_chain_pmfs` apply both to a teacher and a student.

Example (``z_2 = z_1 + N(0, 0.5^2)`` with ``z_1 ~ N(0,1)``: the marginal is ``N(0, 1.25)``):
    >>> import numpy as np
    >>> from scipy.stats import norm
    >>> g = Grid.uniform(-8, 8, 0.01)
    >>> m1 = np.diff(norm.cdf(g.edges))
    >>> m2 = propagate_continuous(m1, [lambda x: (x, np.full_like(x, 0.5))], g)[-1]
    >>> round(float(m2.sum()), 6), round(float((m2 * g.centers ** 2).sum()), 3)
    (1.0, 1.25)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from scipy.special import ndtr

from ..handlers import trace

__all__ = ["Grid", "grid_from_samples", "propagate_continuous", "propagate_discrete", "discrete_kl",
           "uniform_cell_masses", "sample_layers", "gaussian_chain_kl", "binomial_chain_pmfs",
           "binomial_chain_kl"]

LocScale = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Grid:
    """A uniform grid of cells ``[edges[j], edges[j+1])``."""

    edges: np.ndarray

    @classmethod
    def uniform(cls, lo: float, hi: float, h: float) -> "Grid":
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise ValueError(f"grid bounds must be finite with hi > lo, got [{lo}, {hi}]")
        if not h > 0:
            raise ValueError(f"cell width must be positive, got {h}")
        n = int(np.ceil((hi - lo) / h))
        return cls(lo + h * np.arange(n + 1, dtype=np.float64))

    @property
    def h(self) -> float:
        return float(self.edges[1] - self.edges[0])

    @property
    def centers(self) -> np.ndarray:
        return 0.5 * (self.edges[:-1] + self.edges[1:])

    def __len__(self) -> int:
        return len(self.edges) - 1


def grid_from_samples(samples: Sequence[np.ndarray], min_std: float, pad: float = 8.0,
                      cells_per_std: float = 10.0, max_cells: int = 200_000) -> Grid:
    """A grid covering every sample (of every layer, of every model) plus ``pad * min_std``
    on each side, with cells ``min_std / cells_per_std`` wide (wider if that would exceed
    ``max_cells``; the resulting resolution is ``Grid.h``).

    ``min_std`` is the smallest conditional standard deviation of either model: it sets both the
    resolution (a cell must be much narrower than the narrowest kernel) and the margin (mass a
    kernel sends beyond ``pad`` standard deviations of the outermost sample is negligible).
    """
    if not min_std > 0:
        raise ValueError(f"min_std must be positive, got {min_std}")
    lo = min(float(np.min(s)) for s in samples) - pad * min_std
    hi = max(float(np.max(s)) for s in samples) + pad * min_std
    h = max(min_std / cells_per_std, (hi - lo) / max_cells)
    return Grid.uniform(lo, hi, h)


def uniform_cell_masses(grid: Grid, a: float, b: float) -> np.ndarray:
    """Exact cell masses of ``U[a, b]`` (the overlap of each cell with ``[a, b]``, over ``b - a``)."""
    if not b > a:
        raise ValueError(f"U[a, b] needs b > a, got [{a}, {b}]")
    lo = np.clip(grid.edges[:-1], a, b)
    hi = np.clip(grid.edges[1:], a, b)
    return (hi - lo) / (b - a)


def _transition(masses: np.ndarray, loc: np.ndarray, scale: np.ndarray, grid: Grid, width: float) -> np.ndarray:
    """Push cell masses (at the cell centres) through Gaussian kernels ``N(loc_k, scale_k^2)``.

    Each source cell only reaches target cells within ``width`` standard deviations of its mean;
    the Gaussian mass beyond that (< 1e-15 for width 8) is dropped and so counted as lost.
    """
    n = len(grid)
    h, e0 = grid.h, grid.edges[0]
    keep = masses > 0
    if not keep.any():
        return np.zeros(n)
    m, loc, scale = masses[keep], loc[keep], scale[keep]
    half = int(np.ceil(width * scale.max() / h)) + 1
    offs = np.arange(-half, half + 1)
    # target cell indices around each kernel's mean
    centre = np.floor((loc - e0) / h).astype(np.int64)
    j = centre[:, None] + offs[None, :]
    lo_edge = e0 + h * j
    p = ndtr((lo_edge + h - loc[:, None]) / scale[:, None]) - ndtr((lo_edge - loc[:, None]) / scale[:, None])
    w = m[:, None] * np.clip(p, 0.0, None)
    inside = (j >= 0) & (j < n)
    return np.bincount(j[inside], weights=w[inside], minlength=n)


def propagate_continuous(initial: np.ndarray, transitions: Sequence[LocScale], grid: Grid,
                         width: float = 8.0) -> list[np.ndarray]:
    """Cell masses of every layer of a Gaussian chain.

    ``initial``: the cell masses of the first variable (e.g. :func:`uniform_cell_masses`);
    ``transitions[i](x) -> (loc, scale)``: the conditional ``N(loc, scale^2)`` of variable ``i+2``
    at parent values ``x`` (arrays of the cell centres). Returns ``[masses_1, ..., masses_{L+1}]``;
    ``masses.sum()`` is the mass the grid captured at that layer.
    """
    if len(initial) != len(grid):
        raise ValueError(f"initial has {len(initial)} cell masses but the grid has {len(grid)} cells")
    out = [np.asarray(initial, dtype=np.float64)]
    x = grid.centers
    for t in transitions:
        loc, scale = t(x)
        loc = np.broadcast_to(np.asarray(loc, dtype=np.float64), x.shape)
        scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), x.shape)
        if not np.all(scale > 0):
            raise ValueError("conditional standard deviations must be positive")
        if not np.all(np.isfinite(loc)):
            raise ValueError("a conditional mean is not finite on the grid")
        out.append(_transition(out[-1], loc, scale, grid, width))
    return out


def propagate_discrete(initial: np.ndarray, transitions: Sequence[Callable[[np.ndarray], np.ndarray]]
                       ) -> list[np.ndarray]:
    """PMFs of every layer of an integer-valued chain on the support ``0..N``.

    ``initial``: the pmf of the first variable (length ``N + 1``); ``transitions[i](k)``: the
    matrix ``T[k, j] = P(z_{i+2} = j | z_{i+1} = k)`` for parents ``k = 0..N`` (shape
    ``(N+1, N+1)``). Mass is conserved exactly up to rounding when every row sums to one.
    """
    p = np.asarray(initial, dtype=np.float64)
    k = np.arange(len(p), dtype=np.float64)
    out = [p]
    for t in transitions:
        T = np.asarray(t(k), dtype=np.float64)
        if T.shape != (len(p), len(p)):
            raise ValueError(f"transition matrix must be {(len(p), len(p))}, got {T.shape}")
        out.append(out[-1] @ T)
    return out


def discrete_kl(p: np.ndarray, q: np.ndarray, floor: float = 1e-300) -> float:
    """``sum_j p_j log(p_j / q_j)`` over cells/support points with ``p_j > 0``.

    ``q_j`` is floored at ``floor`` (a student that puts no representable mass where the teacher
    has mass gets a very large but finite KL). ``p`` and ``q`` are used as given, not
    renormalized: with captured masses below one, report them beside the KL.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {p.shape} and {q.shape}")
    s = p > 0
    return float(np.sum(p[s] * (np.log(p[s]) - np.log(np.maximum(q[s], floor)))))


# ----------------------------------------------------------------------------- chain models
@torch.no_grad()
def sample_layers(model, n: int) -> list[np.ndarray]:
    """Samples of every variable ``z_1 .. z_L, y`` of a chain (ancestral sampling, global RNG)."""
    with trace() as tr:
        model(n)
    return [m["value"].double().flatten().numpy() for m in tr.sites.values()]


def _loc_scale(model, i):
    @torch.no_grad()
    def f(x):
        d = model.conditional(i, torch.as_tensor(x, dtype=torch.float32)[:, None])
        return d.loc.double().flatten().numpy(), np.broadcast_to(d.scale.double().flatten().numpy(), x.shape)
    return f


@torch.no_grad()
def _min_std(model) -> float:
    x = torch.zeros(1, 1)
    return min(float(model.conditional(i, x).scale.min()) for i in range(model.layers))


def gaussian_chain_kl(teacher, student, samples: Sequence[np.ndarray]) -> dict:
    """Exact ``KL(p_T(y) || p_S(y))`` of two Gaussian chains with ``z_1 ~ U[-1, 1]``, by finite
    volumes on a grid covering ``samples`` (of every layer of both models, :func:`sample_layers`)
    padded by 8 of the smallest conditional standard deviations, cells a tenth of it wide.
    Returns the KL, the mass each model keeps on the grid, and the grid's size and bounds."""
    min_std = min(_min_std(teacher), _min_std(student))
    grid = grid_from_samples(samples, min_std=min_std, pad=8.0, cells_per_std=10.0, max_cells=60_000)
    m1 = uniform_cell_masses(grid, -1.0, 1.0)
    pt = propagate_continuous(m1, [_loc_scale(teacher, i) for i in range(teacher.layers)], grid)
    ps = propagate_continuous(m1, [_loc_scale(student, i) for i in range(student.layers)], grid)
    return {"kl_grid": discrete_kl(pt[-1], ps[-1]), "mass_teacher": float(pt[-1].sum()),
            "mass_student": float(ps[-1].sum()), "grid_cells": len(grid), "grid_h_over_std": grid.h / min_std,
            "grid_lo": float(grid.edges[0]), "grid_hi": float(grid.edges[-1])}


def _binomial_transition(model, i):
    @torch.no_grad()
    def f(k):
        p = model.conditional(i, torch.as_tensor(k, dtype=torch.float32)[:, None]).probs.double()  # (N+1, 1)
        j = torch.arange(model.total + 1, dtype=torch.float64)[None, :]
        return torch.distributions.Binomial(model.total, probs=p).log_prob(j).exp().numpy()
    return f


def binomial_chain_pmfs(model) -> list[np.ndarray]:
    """Exact pmfs of every layer of a binomial chain on ``0..model.total`` (``z_1`` uniform)."""
    n = model.total + 1
    return propagate_discrete(np.full(n, 1.0 / n), [_binomial_transition(model, i) for i in range(model.layers)])


def binomial_chain_kl(teacher_pmf: np.ndarray, student) -> dict:
    """Exact ``KL(p_T(y) || p_S(y))`` of a binomial student chain against the teacher's last-layer
    pmf (``binomial_chain_pmfs(teacher)[-1]``), in the form :func:`gaussian_chain_kl` returns."""
    ps = binomial_chain_pmfs(student)[-1]
    return {"kl_grid": discrete_kl(teacher_pmf, ps), "mass_teacher": float(teacher_pmf.sum()),
            "mass_student": float(ps.sum()), "grid_cells": len(ps), "grid_h_over_std": float("nan"),
            "grid_lo": 0.0, "grid_hi": float(len(ps) - 1)}
