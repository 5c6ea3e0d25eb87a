"""Sites outside handlers are plain samplers; the trace records messages in order."""

import torch
from torch.distributions import Bernoulli, Normal

import dgmkd
from dgmkd.handlers import draw_noise, trace


def test_outside_handlers_sites_sample():
    loc = torch.zeros(5, requires_grad=True)
    z = dgmkd.latent("z", Normal(loc, 1.0))
    assert z.shape == (5,) and z.requires_grad  # rsample where possible
    b = dgmkd.target("b", Bernoulli(torch.full((5,), 0.5)))
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    h = torch.ones(3)
    assert dgmkd.deterministic("h", h) is h


def test_trace_records_in_execution_order_with_kinds():
    def model():
        h = dgmkd.deterministic("h", torch.ones(2))
        z = dgmkd.latent("z", Normal(h, 1.0))
        return dgmkd.target("y", Normal(z, 1.0))

    with trace() as tr:
        y = model()
    assert list(tr.sites) == ["h", "z", "y"]
    assert [m["kind"] for m in tr.sites.values()] == ["deterministic", "latent", "target"]
    assert [m["type"] for m in tr.sites.values()] == ["deterministic", "sample", "sample"]
    assert tr.sites["y"]["value"] is y


def test_draw_noise_writes_latents_in_semi_auxiliary_form():
    with trace() as tr, draw_noise():
        dgmkd.latent("z", Normal(torch.full((4,), 2.0), 3.0))
        dgmkd.target("y", Normal(torch.zeros(4), 1.0))
    m = tr.sites["z"]
    assert torch.allclose(m["value"], 2.0 + 3.0 * m["noise"])
    assert tr.sites["y"]["noise"] is None  # targets keep their own law
