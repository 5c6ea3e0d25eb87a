"""Divergences: closed forms, Monte Carlo fallbacks, and the reduction convention."""

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch.distributions import Bernoulli, Independent, MultivariateNormal, Normal, StudentT, kl_divergence

from dgmkd import divergences as D


def test_reduce_sums_non_batch_dims_and_averages_batch():
    x = torch.arange(24.0).reshape(4, 3, 2)
    assert float(D.reduce(x)) == pytest.approx(x.sum().item() / 4)
    assert float(D.reduce(torch.tensor(2.5))) == 2.5


def test_independent_or_not_gives_the_same_loss():
    p, q = Normal(torch.randn(8, 3), 1.0), Normal(torch.randn(8, 3), 2.0)
    a = D.site("kl", p, q)
    b = D.site("kl", Independent(p, 1), Independent(q, 1))
    assert torch.allclose(a, b)


def test_w2_gaussian_closed_forms_agree():
    torch.manual_seed(0)
    m1, m2 = torch.randn(5, 3), torch.randn(5, 3)
    s1, s2 = torch.rand(5, 3) + 0.2, torch.rand(5, 3) + 0.2
    diag = D.site("w2", Normal(m1, s1), Normal(m2, s2))
    ind = D.site("w2", Independent(Normal(m1, s1), 1), Independent(Normal(m2, s2), 1))
    mvn = D.site("w2", MultivariateNormal(m1, torch.diag_embed(s1 ** 2)), MultivariateNormal(m2, torch.diag_embed(s2 ** 2)))
    assert torch.allclose(diag, ind) and torch.allclose(diag, mvn, atol=1e-4)


def test_w2_full_covariance_known_value():
    # W2^2 between N(0, A) and N(0, B) with commuting A, B: sum (sqrt(a_i) - sqrt(b_i))^2
    a, b = torch.diag(torch.tensor([4.0, 1.0])), torch.diag(torch.tensor([1.0, 9.0]))
    r = torch.tensor([[0.6, -0.8], [0.8, 0.6]])
    w = D.w2(MultivariateNormal(torch.zeros(2), r @ a @ r.T), MultivariateNormal(torch.ones(2), r @ b @ r.T))
    assert float(w) == pytest.approx(2.0 + (2 - 1) ** 2 + (1 - 3) ** 2, rel=1e-4)


def test_w2_on_points_is_squared_distance():
    a, b = torch.randn(4, 2), torch.randn(4, 2)
    assert torch.allclose(D.site("w2", a, b), ((a - b) ** 2).sum(-1).mean())
    assert torch.allclose(D.site("l2", a, b), ((a - b) ** 2).sum(-1).mean())
    assert torch.allclose(D.site("l1", a, b), (a - b).abs().sum(-1).mean())


def test_w2_unsupported_family_is_named():
    with pytest.raises(TypeError, match="Bernoulli"):
        D.w2(Bernoulli(0.3), Bernoulli(0.4))


def test_kl_on_points_is_refused():
    with pytest.raises(TypeError, match="point masses"):
        D.kl(torch.zeros(2), torch.ones(2))


def test_monte_carlo_kl_is_unbiased_where_no_closed_form():
    p, q = StudentT(torch.tensor(5.0), torch.tensor(0.3), torch.tensor(1.2)), Normal(torch.tensor(0.0), torch.tensor(1.5))
    with pytest.raises(NotImplementedError):
        kl_divergence(p, q)
    tp, tq = stats.t(5.0, 0.3, 1.2), stats.norm(0.0, 1.5)
    exact = integrate.quad(lambda x: tp.pdf(x) * (tp.logpdf(x) - tq.logpdf(x)), -60, 60)[0]
    torch.manual_seed(0)
    pb, qb = p.expand((200000,)), q.expand((200000,))
    v = pb.sample()
    est = D.kl(pb, qb, v)
    se = est.std().item() / np.sqrt(len(est))
    assert abs(est.mean().item() - exact) < 4 * se
    # reverse KL by reparameterized student samples
    rev_exact = integrate.quad(lambda x: tq.pdf(x) * (tq.logpdf(x) - tp.logpdf(x)), -60, 60)[0]
    est = D.reverse_kl(pb, qb)  # KL(q || p): q is the student (Normal, reparameterizable)
    assert abs(est.mean().item() - rev_exact) < 4 * est.std().item() / np.sqrt(len(est))


def test_analytic_kl_and_reverse_kl():
    p, q = Normal(torch.tensor([0.0]), 1.0), Normal(torch.tensor([1.0]), 2.0)
    assert torch.allclose(D.kl(p, q), kl_divergence(p, q))
    assert torch.allclose(D.reverse_kl(p, q), kl_divergence(q, p))


def test_get_unknown_name():
    with pytest.raises(ValueError, match="choose one of kl, reverse_kl, w2, l2, l1"):
        D.get("hellinger")


def test_binomial_kl_is_exact_at_saturated_probabilities():
    # torch's closed form returns -inf at a = 1; ours must equal the KL by enumerating the pmf
    from torch.distributions import Binomial

    n = 12
    a = torch.tensor([1.0, 0.0, 0.3, 0.999, 1e-4], dtype=torch.float64)
    b = torch.tensor([0.5, 0.5, 0.7, 0.2, 0.6], dtype=torch.float64)
    p, q = Binomial(n, a), Binomial(n, b)
    k = torch.arange(n + 1, dtype=torch.float64).unsqueeze(-1)
    lp, lq = p.log_prob(k), q.log_prob(k)
    exact = (lp.exp() * (lp - lq)).nan_to_num(0.0).sum(0)  # 0 * log 0 = 0
    for f in (D.kl(p, q), D.reverse_kl(q, p)):
        assert torch.isfinite(f).all() and torch.allclose(f, exact, atol=1e-9)
    # a student whose count is smaller cannot cover the teacher's support: infinite KL
    assert torch.isinf(D.kl(Binomial(5, torch.tensor(0.5)), Binomial(4, torch.tensor(0.5))))
