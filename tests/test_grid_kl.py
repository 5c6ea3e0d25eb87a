"""Exact marginal propagation (dgmkd.metrics.grid_kl) against closed forms."""

import math

import numpy as np
import pytest
from scipy.stats import binom, norm

from dgmkd.metrics.grid_kl import (Grid, discrete_kl, grid_from_samples, propagate_continuous,
                                   propagate_discrete, uniform_cell_masses)


def _gauss_kl(m1, v1, m2, v2):
    return 0.5 * (math.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1)


def _linear_chain(a, b, s, layers):
    return [lambda x, a=a, b=b, s=s: (a * x + b, np.full_like(x, s))] * layers


def test_linear_gaussian_chain_matches_closed_form_kl():
    # z1 ~ N(0,1); teacher z' = 1.05 z + 0.1 eps, student z' = 0.98 z + 0.02 + 0.12 eps, 6 layers
    g = Grid.uniform(-8, 8, 0.01)
    m1 = np.diff(norm.cdf(g.edges))
    L = 6
    pt = propagate_continuous(m1, _linear_chain(1.05, 0.0, 0.1, L), g)
    ps = propagate_continuous(m1, _linear_chain(0.98, 0.02, 0.12, L), g)
    mt, vt, ms, vs = 0.0, 1.0, 0.0, 1.0
    for _ in range(L):
        mt, vt = 1.05 * mt, 1.05 ** 2 * vt + 0.1 ** 2
        ms, vs = 0.98 * ms + 0.02, 0.98 ** 2 * vs + 0.12 ** 2
    exact = _gauss_kl(mt, vt, ms, vs)
    assert len(pt) == L + 1
    # moments of the propagated marginal
    x = g.centers
    assert abs((pt[-1] * x).sum() - mt) < 1e-4
    assert abs((pt[-1] * x ** 2).sum() - vt) < 1e-3 * vt
    assert discrete_kl(pt[-1], ps[-1]) == pytest.approx(exact, rel=2e-3)


def test_mass_is_conserved_on_a_wide_grid_and_lost_mass_is_the_gaussian_tail():
    g = Grid.uniform(-3, 3, 0.005)
    m1 = uniform_cell_masses(g, -1, 1)
    assert m1.sum() == pytest.approx(1.0, abs=1e-12)
    ident = [lambda x: (x, np.full_like(x, 0.1))]
    assert propagate_continuous(m1, ident, g)[-1].sum() == pytest.approx(1.0, abs=1e-9)
    # a grid cut at 1.1: the lost mass is P(z1 + 0.1 eps > 1.1) for z1 ~ U[-1, 1] (and the
    # symmetric one), computed in closed form by integrating the Gaussian tail over z1
    g2 = Grid.uniform(-1.1, 1.1, 0.001)
    m2 = propagate_continuous(uniform_cell_masses(g2, -1, 1), ident, g2)[-1]
    s = 0.1
    # int_{-1}^{1} 0.5 * P(eps > (1.1 - z)/s) dz = 0.5 * s * int_{0.1/s}^{2.1/s} Q(t) dt
    def iq(t):  # antiderivative of the Gaussian upper tail Q(t): t Q(t) - phi(t)
        return t * norm.sf(t) - norm.pdf(t)
    tail = 0.5 * s * (iq(2.1 / s) - iq(0.1 / s))
    assert 1 - m2.sum() == pytest.approx(2 * tail, rel=1e-3)


def test_uniform_plus_gaussian_noise_density():
    # z2 = z1 + s eps with z1 ~ U[-1,1]: density (Phi((z+1)/s) - Phi((z-1)/s)) / 2
    s = 0.1
    g = Grid.uniform(-2, 2, 0.002)
    m = propagate_continuous(uniform_cell_masses(g, -1, 1), [lambda x: (x, np.full_like(x, s))], g)[-1]
    dens = (norm.cdf((g.centers + 1) / s) - norm.cdf((g.centers - 1) / s)) / 2
    assert np.max(np.abs(m / g.h - dens)) < 5e-3
    assert (m * g.centers ** 2).sum() == pytest.approx(1 / 3 + s * s, rel=1e-3)


def test_grid_from_samples_covers_samples_with_margin_and_resolution():
    g = grid_from_samples([np.array([-1.0, 2.0]), np.array([5.0])], min_std=0.1, pad=8, cells_per_std=10)
    assert g.edges[0] <= -1.8 and g.edges[-1] >= 5.8
    assert g.h == pytest.approx(0.01)
    with pytest.raises(ValueError):
        grid_from_samples([np.zeros(3)], min_std=0.0)


def test_discrete_chain_constant_probability_gives_binomial_and_closed_form_kl():
    N = 50
    p0 = np.full(N + 1, 1 / (N + 1))
    k = np.arange(N + 1)
    T = lambda c: (lambda kk: np.tile(binom.pmf(k, N, c), (len(kk), 1)))
    pt = propagate_discrete(p0, [T(0.3), T(0.3)])[-1]
    ps = propagate_discrete(p0, [T(0.7), T(0.35)])[-1]
    assert np.allclose(pt, binom.pmf(k, N, 0.3))
    exact = N * (0.3 * math.log(0.3 / 0.35) + 0.7 * math.log(0.7 / 0.65))
    assert discrete_kl(pt, ps) == pytest.approx(exact, rel=1e-9)


def test_wright_fisher_chain_preserves_mass_mean_and_decays_heterozygosity():
    # z' ~ Bin(N, z/N): E z' = E z, and H = E[z (N - z)] / N^2 shrinks by exactly (1 - 1/N) per layer
    N = 100
    k = np.arange(N + 1)
    T = lambda kk: binom.pmf(k[None, :], N, kk[:, None] / N)
    ps = propagate_discrete(np.full(N + 1, 1 / (N + 1)), [T] * 5)
    H = [float((p * k * (N - k)).sum()) / N ** 2 for p in ps]
    for p in ps:
        assert p.sum() == pytest.approx(1.0, abs=1e-12)
        assert (p * k).sum() == pytest.approx(N / 2, abs=1e-9)
    for a, b in zip(H, H[1:]):
        assert b == pytest.approx(a * (1 - 1 / N), rel=1e-10)


def test_discrete_kl_basic_properties():
    p = np.array([0.2, 0.8, 0.0])
    assert discrete_kl(p, p) == 0.0
    assert discrete_kl(p, np.array([0.5, 0.4, 0.1])) > 0
    with pytest.raises(ValueError):
        discrete_kl(p, np.ones(2))
