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
    from torch.distributions import VonMises

    with pytest.raises(reparam.UnsupportedDistributionError, match=r"VonMises.*register"):
        reparam.noise(VonMises(torch.zeros(2), 1.0))


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


# ----------------------------------------------------------------------------- Gamma, Beta, Dirichlet, StudentT, Chi2
from torch.distributions import Beta, Chi2, Dirichlet, Gamma, StudentT  # noqa: E402

SHAPED = [
    (Gamma(torch.tensor(0.3), torch.tensor(2.0)), stats.gamma(0.3, scale=0.5).cdf),
    (Gamma(torch.tensor(7.5), torch.tensor(0.5)), stats.gamma(7.5, scale=2.0).cdf),
    (Chi2(torch.tensor(3.0)), stats.chi2(3.0).cdf),
    (Beta(torch.tensor(0.4), torch.tensor(2.5)), stats.beta(0.4, 2.5).cdf),
    (StudentT(torch.tensor(2.5), torch.tensor(1.0), torch.tensor(2.0)), stats.t(2.5, 1.0, 2.0).cdf),
]


@pytest.mark.parametrize("d,cdf", SHAPED, ids=["gamma-small", "gamma-large", "chi2", "beta", "student-t"])
def test_shape_families_law_ks(d, cdf):
    torch.manual_seed(5)
    assert stats.kstest(draw(d).double().numpy(), cdf).pvalue > 1e-3
    assert reparam.noise_law(d) == "standard_uniform"


def test_dirichlet_law_and_coupling():
    torch.manual_seed(6)
    alpha = torch.tensor([0.5, 1.5, 3.0])
    x = draw(Dirichlet(alpha)).double()
    assert torch.allclose(x.sum(-1), torch.ones(N, dtype=torch.float64), atol=1e-5)
    for k in range(3):  # marginals are Beta(alpha_k, alpha_0 - alpha_k)
        assert stats.kstest(x[:, k].numpy(), stats.beta(float(alpha[k]), float(alpha.sum() - alpha[k])).cdf).pvalue > 1e-3
    # one uniform per coordinate: raising alpha_0 with the noise fixed raises coordinate 0's Gamma
    u = torch.rand(1000, 3)
    a = reparam.transform(Dirichlet(alpha.expand(1000, 3)), u)
    b = reparam.transform(Dirichlet(torch.tensor([2.0, 1.5, 3.0]).expand(1000, 3)), u)
    assert bool((b[:, 0] >= a[:, 0]).all()) and bool((b[:, 1:] <= a[:, 1:] + 1e-6).all())


def test_quantile_coupling_is_monotone_and_equal_parameters_give_equal_values():
    u = torch.linspace(0.01, 0.99, 50)
    g = reparam.transform(Gamma(torch.full((50,), 2.0), 1.0), u)
    assert bool((g.diff() > 0).all())
    assert torch.equal(g, reparam.transform(Gamma(torch.full((50,), 2.0), 1.0), u))
    assert bool((reparam.transform(Gamma(torch.full((50,), 2.5), 1.0), u) > g).all())  # stochastically larger


def test_edges_of_the_uniform_stay_finite():
    u = torch.tensor([0.0, 1 - 2.0 ** -24])  # torch.rand can return 0; float32's largest value below 1
    p = torch.tensor([0.05, 0.05], requires_grad=True)
    for make in (lambda p: Gamma(p, 1.0), lambda p: Beta(p, 0.3), lambda p: StudentT(p * 20),
                 lambda p: Dirichlet(torch.stack([p, 1 - p], -1))):
        z = reparam.transform(make(p), u)
        assert bool(torch.isfinite(z).all()) and bool(make(p).support.check(z).all())
        (g,) = torch.autograd.grad(z.sum(), p)
        assert bool(torch.isfinite(g).all())


def _quantile_fn(family):
    """x(theta) at a fixed noise, for gradcheck (a finite difference of the quantile in float64)."""
    u = torch.tensor([1e-4, 0.02, 0.3, 0.5, 0.7, 0.98, 1 - 1e-4], dtype=torch.float64)
    return u, {
        "gamma": lambda a, r: reparam.transform(Gamma(a, r), u),
        "chi2": lambda df: reparam.transform(Chi2(df), u),
        "beta": lambda a, b: reparam.transform(Beta(a, b), u),
        "student_t": lambda df, loc, scale: reparam.transform(StudentT(df, loc, scale), u),
    }[family]


@pytest.mark.parametrize("family,params", [
    ("gamma", [0.1, 2.0]), ("gamma", [1.0, 0.5]), ("gamma", [40.0, 3.0]), ("chi2", [2.5]),
    ("beta", [0.3, 0.7]), ("beta", [2.0, 5.0]), ("beta", [30.0, 4.0]),
    ("student_t", [1.5, 0.3, 2.0]), ("student_t", [12.0, -1.0, 0.5]),
])
def test_implicit_gradients_match_finite_differences_of_the_quantile(family, params):
    u, f = _quantile_fn(family)
    theta = [torch.full((7,), v, dtype=torch.float64, requires_grad=True) for v in params]
    # rtol 1e-4: the backward's own central difference of the CDF is accurate to ~1e-7 relative
    assert torch.autograd.gradcheck(f, theta, eps=1e-6 * max(params), atol=1e-8, rtol=1e-4)


@pytest.mark.parametrize("family", ["gamma", "beta", "dirichlet", "student_t", "chi2"])
def test_mean_gradient_identity_against_exact_and_torch_rsample(family):
    """d/dtheta E[f(z)] from our quantile samples = the exact value (within 4 standard errors, by
    batches), and agrees with torch's own rsample gradients (a different sampler, the same law)."""
    torch.manual_seed(7)
    B, n = 20, 4000
    if family == "gamma":
        make = lambda th: Gamma(th[0], th[1])  # noqa: E731
        theta0, f = [0.7, 1.5], lambda z: z ** 2
        exact = lambda a, b: [(2 * a + 1) / b ** 2, -2 * a * (a + 1) / b ** 3]  # noqa: E731  E z^2 = a(a+1)/b^2
    elif family == "chi2":
        make = lambda th: Chi2(th[0])  # noqa: E731
        theta0, f = [3.0], lambda z: z ** 2
        exact = lambda k: [2 * k + 2]  # noqa: E731  E z^2 = k^2 + 2k
    elif family == "beta":
        make = lambda th: Beta(th[0], th[1])  # noqa: E731
        theta0, f = [0.6, 2.0], lambda z: z
        exact = lambda a, b: [b / (a + b) ** 2, -a / (a + b) ** 2]  # noqa: E731
    elif family == "dirichlet":
        make = lambda th: Dirichlet(torch.stack(th))  # noqa: E731
        theta0, f = [0.5, 1.0, 2.5], lambda z: z[..., 0]
        exact = lambda a0, a1, a2: [(a1 + a2) / (a0 + a1 + a2) ** 2] + [-a0 / (a0 + a1 + a2) ** 2] * 2  # noqa: E731
    else:  # student_t: E z^2 = scale^2 df/(df-2) + loc^2
        make = lambda th: StudentT(th[0], th[1], th[2])  # noqa: E731
        theta0, f = [6.0, 0.5, 1.5], lambda z: z ** 2
        exact = lambda df, loc, s: [-2 * s ** 2 / (df - 2) ** 2, 2 * loc, 2 * s * df / (df - 2)]  # noqa: E731
    want = torch.tensor(exact(*theta0), dtype=torch.float64)

    def batch_grads(ours):
        out = []
        for _ in range(B):
            th = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in theta0]
            d = make(th)
            if ours:
                big = d.expand(torch.Size([n]) + d.batch_shape)
                z = reparam.transform(big, reparam.noise(big))
            else:
                z = d.rsample((n,))
            out.append(torch.stack(torch.autograd.grad(f(z).mean(), th)))
        return torch.stack(out)

    ours, torchs = batch_grads(True), batch_grads(False)
    se = ours.std(0) / B ** 0.5
    assert bool(((ours.mean(0) - want).abs() < 4 * se + 1e-9).all()), (ours.mean(0), want, se)
    se2 = (ours.var(0) / B + torchs.var(0) / B).sqrt()
    assert bool(((ours.mean(0) - torchs.mean(0)).abs() < 4 * se2).all())
