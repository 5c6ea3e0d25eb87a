"""Density-ratio KL estimation (dgmkd.metrics.kl_dre) against pairs with a known KL."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import binom

from dgmkd.metrics.kl_dre import kl_dre


def _gauss_kl(m1, s1, m2, s2):
    return math.log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5


@pytest.mark.parametrize("m2,s2", [(1.0, 1.0), (0.0, 2.0), (0.5, 0.7), (0.0, 1.0)])
def test_gaussian_pairs_with_known_kl(m2, s2):
    g = torch.Generator().manual_seed(3)
    n = 4000
    p = torch.randn(n, generator=g)
    q = m2 + s2 * torch.randn(n, generator=g)
    exact = _gauss_kl(0.0, 1.0, m2, s2)
    r = kl_dre(p, q, seed=0)
    assert abs(r.kl - exact) < 0.08 + 0.15 * exact, (r, exact)
    assert abs(r.kl_plugin - exact) < 0.08 + 0.15 * exact, (r, exact)


def test_orders_pairs_by_kl():
    # the toy needs DRE to rank students; KL 0.02 < 0.125 < 0.5
    g = torch.Generator().manual_seed(4)
    p = torch.randn(4000, generator=g)
    ests = [kl_dre(p, torch.randn(4000, generator=g) + d, seed=1).kl for d in (0.2, 0.5, 1.0)]
    assert ests[0] < ests[1] < ests[2]


def test_discrete_binomial_pair_with_known_kl():
    # integer-valued samples as in the binomial toy: Bin(1000, 0.5) vs Bin(1000, 0.52)
    rng = np.random.default_rng(0)
    N, a, b = 1000, 0.5, 0.52
    exact = N * (a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b)))  # = 0.8
    r = kl_dre(rng.binomial(N, a, 4000).astype(float), rng.binomial(N, b, 4000).astype(float), seed=0)
    assert abs(r.kl - exact) < 0.15 * exact, (r, exact)
    assert r.accuracy > 0.6


def test_identical_distributions_give_near_zero_and_chance_accuracy():
    g = torch.Generator().manual_seed(5)
    r = kl_dre(torch.rand(3000, generator=g), torch.rand(3000, generator=g), seed=0)
    assert abs(r.kl) < 0.03 and abs(r.accuracy - 0.5) < 0.05


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="holdout"):
        kl_dre(torch.randn(100), torch.randn(100), holdout=1.5)
    with pytest.raises(ValueError, match="NaN"):
        kl_dre(torch.tensor([float("nan")] * 100), torch.randn(100))
    with pytest.raises(ValueError, match="at least 10"):
        kl_dre(torch.randn(10), torch.randn(10))
