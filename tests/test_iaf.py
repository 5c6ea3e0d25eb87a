"""Tests of the IAF student (Kingma et al. 2016; Huang et al. Eq. 3-5)."""

import math

import pytest
import torch

from dgmkd.models.iaf import IAF, IAFLayer


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _randomize(model, scale=0.3):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))


def test_fresh_student_is_identity():
    s = IAF(5, layers=3, hidden=(16,))
    z = torch.randn(4, 5)
    x, ld = s.from_noise(z)
    assert torch.equal(x, z) and torch.all(ld == 0)


def test_layer_jacobian_is_lower_triangular_with_logdet():
    d = 6
    layer = IAFLayer(d, hidden=(32,))
    _randomize(layer)
    z = torch.randn(1, d)
    jac = torch.autograd.functional.jacobian(lambda v: layer.from_noise(v)[0], z)[0, :, 0, :]
    assert torch.triu(jac, 1).abs().max() == 0  # x_t depends on z_<=t (Eq. 3)
    assert torch.allclose(torch.linalg.slogdet(jac).logabsdet, layer.from_noise(z)[1][0], atol=1e-5)  # Eq. 5


def test_stack_logdet_matches_autograd_jacobian():
    d = 5
    s = IAF(d, layers=3, hidden=(32,))
    _randomize(s)
    for _ in range(3):
        z = torch.randn(1, d)
        jac = torch.autograd.functional.jacobian(lambda v: s.from_noise(v[None])[0][0], z[0])
        # alternating orders: the stack is *not* triangular, but its log-det is still exact
        assert torch.triu(jac, 1).abs().max() > 0
        assert torch.allclose(torch.linalg.slogdet(jac).logabsdet, s.from_noise(z)[1][0], atol=1e-4)


def test_inverse_round_trip_and_exact_log_density():
    d = 6
    s = IAF(d, layers=4, hidden=(32,)).double()
    _randomize(s, 0.2)
    x, log_p = s.sample_with_log_prob(50)
    z, ld_inv = s.to_noise(x)
    x2, ld = s.from_noise(z)
    assert torch.allclose(x, x2, atol=1e-8)
    assert torch.allclose(ld, -ld_inv, atol=1e-8)
    # one-pass density of own samples == density via the (sequential) inverse
    assert torch.allclose(log_p, s.log_prob(x), atol=1e-8)


def test_density_normalizes_in_1d():
    s = IAF(1, layers=2, hidden=(8,))
    _randomize(s, 1.0)
    grid = torch.linspace(-60, 60, 60001)[:, None]
    with torch.no_grad():
        mass = torch.trapezoid(s.log_prob(grid).exp(), grid[:, 0])
    assert abs(float(mass) - 1.0) < 1e-3


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least one layer"):
        IAF(3, layers=0)
    with pytest.raises(ValueError, match=r"\(batch, 3\)"):
        IAF(3, layers=1, hidden=(4,)).from_noise(torch.randn(2, 2))
    with pytest.raises(TypeError):
        IAF(3, layers=1, hidden=(4,)).to_noise([1.0, 2.0, 3.0])
