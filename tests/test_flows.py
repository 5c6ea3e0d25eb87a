"""Flows: exact invertibility, log-determinants against autograd Jacobians, state walking."""

import pytest
import torch
import zuko
from torch.autograd.functional import jacobian

from dgmkd.models.autoregressive import standard_normal_log_prob
from dgmkd.models.flows import ActNorm, AffineCoupling, Glow, InvConv1x1, maf, realnvp, slerp_norm, squeeze, unsqueeze

torch.set_num_threads(1)


def _perturb(m, scale=0.3):
    """Move every parameter away from its (often identity) initialization."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m


def _flows(dim):
    torch.manual_seed(0)
    out = {
        "maf": maf(dim, steps=3, hidden=8),
        "realnvp": realnvp(dim, steps=3, hidden=8),
        "glow_tab": Glow((dim, 1, 1), levels=1, steps=3, hidden=8, squeeze=False),
    }
    for f in out.values():
        f.double()
        f.forward_states(torch.randn(32, dim, dtype=torch.float64))  # ActNorm data init
        _perturb(f, 0.1)
    return out


@pytest.mark.parametrize("kind", ["maf", "realnvp", "glow_tab"])
def test_tabular_invertible_and_logdet_matches_jacobian(kind):
    dim = 4
    f = _flows(dim)[kind].eval()
    x = torch.randn(3, dim, dtype=torch.float64)
    z, ladj, states = f.forward_states(x)
    assert len(states) == 3 and torch.equal(states[-1], z)
    torch.testing.assert_close(f.from_noise(z), x, atol=1e-6, rtol=1e-6)
    for i in range(3):
        J = jacobian(lambda v: f.forward_states(v[None])[0][0], x[i])
        torch.testing.assert_close(ladj[i], torch.linalg.slogdet(J)[1], atol=1e-6, rtol=1e-6)


def test_zuko_wrapper_log_prob_equals_zuko():
    torch.manual_seed(0)
    f = maf(3, steps=2, hidden=8)
    x = torch.randn(5, 3)
    torch.testing.assert_close(f.log_prob(x), f.flow().log_prob(x), atol=1e-5, rtol=1e-5)


def test_glow_layers_invert_and_logdet():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 2, 2, dtype=torch.float64)
    for layer in (ActNorm(4), InvConv1x1(4), AffineCoupling(4, 8)):
        layer.double()
        layer(x)
        _perturb(layer, 0.2).eval()
        y, ladj = layer(x)
        torch.testing.assert_close(layer.inverse(y), x, atol=1e-9, rtol=1e-9)
        J = jacobian(lambda v: layer(v[None])[0][0].flatten(), x[0]).reshape(16, 16)
        torch.testing.assert_close(ladj[0], torch.linalg.slogdet(J)[1], atol=1e-8, rtol=1e-8)


def test_squeeze_roundtrip():
    x = torch.arange(2 * 3 * 4 * 6.).view(2, 3, 4, 6)
    s = squeeze(x)
    assert s.shape == (2, 12, 2, 3)
    assert torch.equal(unsqueeze(s), x)
    assert torch.equal(s[0, :4, 0, 0], torch.tensor([x[0, 0, 0, 0], x[0, 0, 0, 1], x[0, 0, 1, 0], x[0, 0, 1, 1]]))


def test_multiscale_glow_invertible_logdet_and_states():
    torch.manual_seed(0)
    g = Glow((1, 4, 4), levels=2, steps=2, hidden=8).double()
    g.forward_states(torch.randn(16, 1, 4, 4, dtype=torch.float64))
    _perturb(g, 0.1).eval()
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    z, ladj, states = g.forward_states(x)
    assert z.shape == (2, 16) and g.dim == 16 and g.step_groups() == [2, 2]
    assert [tuple(s.shape[1:]) for s in states] == [(4, 2, 2)] * 2 + [(8, 1, 1)] * 2
    torch.testing.assert_close(g.from_noise(z), x, atol=1e-8, rtol=1e-8)
    J = jacobian(lambda v: g.forward_states(v[None])[0][0], x[0]).reshape(16, 16)
    torch.testing.assert_close(ladj[0], torch.linalg.slogdet(J)[1], atol=1e-8, rtol=1e-8)
    # log p integrates the change of variables exactly
    torch.testing.assert_close(g.log_prob(x), standard_normal_log_prob(z) + ladj)


def test_sample_temperature_and_shapes():
    torch.manual_seed(0)
    g = Glow((1, 8, 8), levels=2, steps=1, hidden=8)
    assert g.sample(3, temperature=0.7).shape == (3, 1, 8, 8)
    t = Glow((5, 1, 1), levels=1, steps=2, hidden=8, squeeze=False)
    assert t.sample(4).shape == (4, 5)


def test_norm_preserving_interpolation():
    torch.manual_seed(0)
    u, v = torch.randn(4, 10), torch.randn(4, 10)
    torch.testing.assert_close(slerp_norm(u, v, 0.0), u)
    torch.testing.assert_close(slerp_norm(u, v, 1.0), v)
    m = slerp_norm(u, v, 0.3)
    torch.testing.assert_close(m.norm(dim=1), 0.7 * u.norm(dim=1) + 0.3 * v.norm(dim=1))
