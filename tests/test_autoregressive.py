"""Tests of the Gaussian-conditional autoregressive teacher (Huang et al. §4) and its MADE masks."""

import math

import pytest
import torch
from torch.distributions import Independent, Normal

from dgmkd.models.autoregressive import MADE, GaussianAutoregressive


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _randomize(model, scale=0.3):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))


def test_made_is_strictly_autoregressive():
    d = 6
    made = MADE(d, hidden=(32, 32), n_params=2)
    x = torch.randn(1, d)
    jac = torch.autograd.functional.jacobian(lambda v: made(v)[0], x)[:, :, 0, :]  # (2, d, d)
    # output t may depend only on inputs < t: the Jacobian is strictly lower triangular
    upper = torch.triu(torch.ones(d, d, dtype=torch.bool))
    assert jac[:, upper].abs().max() == 0
    # and the mask is not trivially empty: the last output does see earlier inputs
    assert jac[:, d - 1, : d - 1].abs().sum() > 0


def test_made_rejects_bad_input():
    with pytest.raises(ValueError, match="hidden"):
        MADE(3, hidden=())
    with pytest.raises(ValueError, match=r"\(batch, 3\)"):
        MADE(3, hidden=(8,))(torch.randn(2, 4))


def test_inverse_jacobian_triangular_and_logdet():
    d = 5
    m = GaussianAutoregressive(d, hidden=(32,))
    _randomize(m)
    x = torch.randn(1, d)
    jac = torch.autograd.functional.jacobian(lambda v: m.to_noise(v)[0], x)[0, :, 0, :]
    assert torch.triu(jac, 1).abs().max() == 0  # z_t depends on x_<=t only
    _, logdet = m.to_noise(x)
    assert torch.allclose(torch.linalg.slogdet(jac).logabsdet, logdet[0], atol=1e-5)
    # diagonal is 1 / sigma_t
    _, log_sigma = m.conditionals(x)
    assert torch.allclose(jac.diagonal(), torch.exp(-log_sigma[0]), atol=1e-6)


def test_sequential_sampling_inverts_parallel_encoding():
    m = GaussianAutoregressive(7, hidden=(32, 32))
    _randomize(m)
    z = torch.randn(20, 7)
    x, ld = m.from_noise(z)
    z2, ld_inv = m.to_noise(x)
    assert torch.allclose(z, z2, atol=1e-4)
    assert torch.allclose(ld, -ld_inv, atol=1e-4)
    # and x -> z -> x
    x2, _ = m.from_noise(z2)
    assert torch.allclose(x, x2, atol=1e-4)


def test_log_prob_equals_change_of_variables_and_chain_rule():
    m = GaussianAutoregressive(4, hidden=(16,))
    _randomize(m)
    x = torch.randn(10, 4)
    # chain rule (Eq. 1): sum_t log N(x_t; mu_t(x_<t), sigma_t(x_<t))
    mu, log_sigma = m.conditionals(x)
    chain = Independent(Normal(mu, log_sigma.exp()), 1).log_prob(x)
    assert torch.allclose(m.log_prob(x), chain, atol=1e-5)
    # change of variables with a numerically computed Jacobian
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: m.to_noise(v[None])[0][0], x[i])
        z = m.to_noise(x[i:i + 1])[0][0]
        ref = -0.5 * (z ** 2).sum() - 2 * math.log(2 * math.pi) + torch.linalg.slogdet(jac).logabsdet
        assert torch.allclose(m.log_prob(x[i:i + 1])[0], ref, atol=1e-4)


def test_density_normalizes_in_1d():
    m = GaussianAutoregressive(1, hidden=(8,))
    _randomize(m, 1.0)
    grid = torch.linspace(-40, 40, 40001)[:, None]
    mass = torch.trapezoid(m.log_prob(grid).exp(), grid[:, 0])
    assert abs(float(mass.detach()) - 1.0) < 1e-3


def test_samples_have_the_model_density():
    # a 2-d model: sample moments agree with moments of the density by importance of the grid
    m = GaussianAutoregressive(2, hidden=(16,)).double()
    _randomize(m, 0.2)
    with torch.no_grad():
        xs = m.sample(20000)
        g = torch.linspace(-25, 25, 1001, dtype=torch.float64)
        gx, gy = torch.meshgrid(g, g, indexing="ij")
        pts = torch.stack([gx.ravel(), gy.ravel()], -1)
        w = m.log_prob(pts).exp() * (g[1] - g[0]) ** 2
    assert abs(float(w.sum()) - 1) < 1e-2
    mean_grid = (w[:, None] * pts).sum(0) / w.sum()
    se = xs.std(0) / math.sqrt(len(xs))
    assert torch.all((xs.mean(0) - mean_grid).abs() < 4 * se + 1e-3)


def test_site_forward_names_latent_and_output():
    import dgmkd
    m = GaussianAutoregressive(3, hidden=(8,))
    with dgmkd.handlers.trace() as tr, dgmkd.handlers.draw_noise():
        x = m(5)
    assert list(tr.sites) == ["z", "x"]
    assert tr.sites["z"]["kind"] == "latent" and tr.sites["x"]["kind"] == "deterministic"
    assert torch.allclose(m.from_noise(tr.sites["z"]["noise"])[0], x)
    with pytest.raises(ValueError, match="output"):
        m(2, output="nope")
    with pytest.raises(ValueError, match="positive int"):
        m.sample(0)


# ----------------------------------------------------------------- WaveNet-style causal-conv teacher
def test_causal_conv_teacher_is_autoregressive_and_invertible():
    from dgmkd.models.autoregressive import CausalConvAutoregressive

    L = 12
    m = CausalConvAutoregressive(L, channels=8, layers=3).double()
    _randomize(m, 0.2)
    x = torch.randn(1, L, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: torch.stack(m.conditionals(v)), x)[:, 0, :, 0, :]
    upper = torch.triu(torch.ones(L, L, dtype=torch.bool))
    assert jac[:, upper].abs().max() == 0          # conditionals read x_<t only
    assert jac[0, L - 1, : L - 1].abs().sum() > 0   # ... and do read them
    # receptive field 2 + (2 - 1)(2^3 - 1) = 9 steps of x_<t: x_{t-10} and earlier are out of reach
    assert jac[:, L - 1, : L - 1 - 9].abs().max() == 0
    assert jac[:, L - 1, L - 1 - 9].abs().max() > 0
    z = torch.randn(16, L, dtype=torch.float64)
    xs, ld = m.from_noise(z)
    z2, ld2 = m.to_noise(xs)
    assert torch.allclose(z, z2, atol=1e-9) and torch.allclose(ld, -ld2, atol=1e-9)
    jz = torch.autograd.functional.jacobian(lambda v: m.to_noise(v[None])[0][0], xs[0])
    assert torch.allclose(torch.linalg.slogdet(jz).logabsdet, ld2[0], atol=1e-9)
    with pytest.raises(ValueError, match="length"):
        CausalConvAutoregressive(0)
