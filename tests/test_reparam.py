"""Reparameterized samples have the right law; noise depends only on shapes; registration."""

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import (Bernoulli, Binomial, Categorical, Cauchy, Exponential, Geometric, Gumbel,
                                 Independent, Laplace, LogNormal, LowRankMultivariateNormal,
                                 MultivariateNormal, Normal, OneHotCategorical, Poisson, Uniform)

from dgmkd import reparam

N = 20000


def draw(d, n=N):
    """n samples of a scalar-batch distribution via the reparameterizer."""
    big = d.expand(torch.Size([n]) + d.batch_shape)
    return reparam.transform(big, reparam.noise(big))


CONTINUOUS = [
    (Normal(torch.tensor(1.5), torch.tensor(0.7)), stats.norm(1.5, 0.7).cdf),
    (Laplace(torch.tensor(-1.0), torch.tensor(2.0)), stats.laplace(-1.0, 2.0).cdf),
    (Cauchy(torch.tensor(0.5), torch.tensor(0.3)), stats.cauchy(0.5, 0.3).cdf),
    (Uniform(torch.tensor(-2.0), torch.tensor(3.0)), stats.uniform(-2.0, 5.0).cdf),
    (Exponential(torch.tensor(2.0)), stats.expon(scale=0.5).cdf),
    (LogNormal(torch.tensor(0.2), torch.tensor(0.5)), stats.lognorm(0.5, scale=np.exp(0.2)).cdf),
    (Gumbel(torch.tensor(1.0), torch.tensor(2.0)), stats.gumbel_r(1.0, 2.0).cdf),
]


@pytest.mark.parametrize("d,cdf", CONTINUOUS, ids=lambda x: type(x).__name__ if not callable(x) else "")
def test_continuous_law_ks(d, cdf):
    torch.manual_seed(0)
    x = draw(d).double().numpy()
    assert stats.kstest(x, cdf).pvalue > 1e-3


def _chi2(x, pmf_values, support):
    counts = np.array([(x == k).sum() for k in support], dtype=float)
    expected = N * np.asarray(pmf_values, dtype=float)
    keep = expected > 5
    # pool the tail into one cell so the test stays valid
    obs = np.append(counts[keep], N - counts[keep].sum())
    exp = np.append(expected[keep], N - expected[keep].sum())
    if exp[-1] < 1e-9:
        obs, exp = obs[:-1], exp[:-1]
    return stats.chisquare(obs, exp).pvalue


DISCRETE = [
    (Bernoulli(torch.tensor(0.3)), range(2), lambda k: stats.bernoulli(0.3).pmf(k)),
    (Categorical(torch.tensor([0.1, 0.5, 0.15, 0.25])), range(4), lambda k: [0.1, 0.5, 0.15, 0.25][k]),
    (Binomial(30, torch.tensor(0.35)), range(31), lambda k: stats.binom(30, 0.35).pmf(k)),
    (Binomial(1000, torch.tensor(0.02)), range(1001), lambda k: stats.binom(1000, 0.02).pmf(k)),
    (Poisson(torch.tensor(3.7)), range(40), lambda k: stats.poisson(3.7).pmf(k)),
    (Poisson(torch.tensor(250.0)), range(500), lambda k: stats.poisson(250.0).pmf(k)),
    (Geometric(torch.tensor(0.2)), range(100), lambda k: stats.geom(0.2, loc=-1).pmf(k)),
]


@pytest.mark.parametrize("d,support,pmf", DISCRETE, ids=lambda x: type(x).__name__ if not callable(x) and not isinstance(x, range) else "")
def test_discrete_law_chi2(d, support, pmf):
    torch.manual_seed(1)
    x = draw(d).numpy()
    assert _chi2(x, [pmf(k) for k in support], support) > 1e-3


def test_bernoulli_is_quantile_coupling_in_order_0_1():
    d = Bernoulli(torch.tensor([0.3, 0.3]))
    u = torch.tensor([0.69, 0.71])  # F(0) = 0.7
    assert reparam.transform(d, u).tolist() == [0.0, 1.0]


def test_categorical_is_quantile_coupling_in_index_order():
    d = Categorical(torch.tensor([0.2, 0.3, 0.5]))
    u = torch.tensor([0.1, 0.25, 0.49, 0.51, 0.999])
    out = torch.stack([reparam.transform(d, x) for x in u])
    assert out.tolist() == [0, 1, 1, 2, 2]


def test_one_hot_matches_categorical():
    probs = torch.softmax(torch.randn(50, 5), -1)
    u = torch.rand(50)
    idx = reparam.transform(Categorical(probs), u)
    oh = reparam.transform(OneHotCategorical(probs), u)
    assert torch.equal(oh.argmax(-1), idx) and torch.equal(oh.sum(-1), torch.ones(50))


def test_multivariate_normal_moments():
    torch.manual_seed(2)
    cov = torch.tensor([[2.0, 0.6], [0.6, 0.5]])
    d = MultivariateNormal(torch.tensor([1.0, -1.0]), cov).expand((N,))
    x = reparam.transform(d, reparam.noise(d))
    assert torch.allclose(x.mean(0), torch.tensor([1.0, -1.0]), atol=0.05)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.06)


def test_low_rank_mvn_moments():
    torch.manual_seed(3)
    w = torch.tensor([[1.0], [0.5]])
    diag = torch.tensor([0.3, 0.2])
    d = LowRankMultivariateNormal(torch.zeros(2), w, diag).expand((N,))
    x = reparam.transform(d, reparam.noise(d))
    assert torch.allclose(torch.cov(x.T), w @ w.T + torch.diag(diag), atol=0.05)


def test_independent_and_transformed_use_base_noise():
    d = Independent(Normal(torch.zeros(4, 3), 2.0), 1)
    eps = reparam.noise(d)
    assert eps.shape == (4, 3)
    assert torch.allclose(reparam.transform(d, eps), 2 * eps)
    ln = LogNormal(torch.zeros(5), 1.0)
    e = torch.randn(5)
    assert torch.allclose(reparam.transform(ln, e), e.exp())
    assert reparam.noise_law(d) == reparam.noise_law(ln) == "standard_normal"


@pytest.mark.parametrize("make", [
    lambda p: Normal(p, p.abs() + 1), lambda p: Bernoulli(logits=p), lambda p: Categorical(logits=p.unsqueeze(-1).expand(3, 4) * torch.arange(4.)),
    lambda p: Binomial(12, logits=p), lambda p: Poisson(p.abs() + 1),
    lambda p: Independent(Normal(p.unsqueeze(-1).expand(3, 2), 1.0), 1),
])
def test_noise_shape_independent_of_parameters(make):
    a, b = make(torch.zeros(3)), make(torch.full((3,), 5.0))
    ea, eb = reparam.noise(a), reparam.noise(b)
    assert ea.shape == eb.shape and ea.dtype == eb.dtype


def test_continuous_transform_is_differentiable():
    loc = torch.tensor([0.5], requires_grad=True)
    z = reparam.transform(Normal(loc, 1.0), torch.tensor([0.3]))
    z.sum().backward()
    assert loc.grad.item() == 1.0


def test_unsupported_type_names_the_fix():
    from torch.distributions import Gamma

    with pytest.raises(reparam.UnsupportedDistributionError, match=r"Gamma.*register"):
        reparam.noise(Gamma(torch.ones(2), 1.0))


def test_register_user_type():
    from torch.distributions import Gamma

    class ShapeOne(Gamma):  # Gamma(1, rate) = Exponential(rate): icdf -log(1-u)/rate
        pass

    reparam.register(ShapeOne, lambda d: torch.rand(d.batch_shape), lambda d, u: -torch.log1p(-u) / d.rate,
                     law="standard_uniform")
    torch.manual_seed(4)
    d = ShapeOne(torch.ones(N), torch.full((N,), 2.0))
    x = reparam.transform(d, reparam.noise(d)).numpy()
    assert stats.kstest(x, stats.expon(scale=0.5).cdf).pvalue > 1e-3
    assert reparam.noise_law(d) == "standard_uniform"
    with pytest.raises(TypeError):
        reparam.register("not a type", lambda d: 0, lambda d, e: 0)


def test_count_quantiles_at_the_edges():
    u = torch.tensor([0.0, 0.5, 1 - 1e-7])  # torch.rand can return exactly 0
    assert reparam.transform(Binomial(10, torch.zeros(3)), u).tolist() == [0, 0, 0]
    assert reparam.transform(Binomial(10, torch.ones(3)), u).tolist() == [10, 10, 10]
    assert reparam.transform(Binomial(torch.tensor([0.0, 4.0, 4.0]), torch.full((3,), 0.5)), u).tolist() == [0, 2, 4]
    assert reparam.transform(Poisson(torch.full((3,), 2.0)), u).tolist()[0] == 0
