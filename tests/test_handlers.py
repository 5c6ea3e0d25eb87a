"""Deferred target samples in couple: a target nothing reads is never drawn; a read one is drawn once,
from its distribution, and every reader sees that one draw."""

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Categorical, Independent, Normal

import dgmkd
from dgmkd.handlers import deferred_sample, is_pending


class Decoder(nn.Module):
    """z (latent) -> x (784-d Bernoulli target): no site reads x."""

    def __init__(self, h):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(4, h), nn.ReLU(), nn.Linear(h, 16))

    def forward(self, n):
        z = dgmkd.latent("z", Independent(Normal(torch.zeros(n, 4), 1.0), 1))
        return dgmkd.target("x", Independent(Bernoulli(logits=self.f(z)), 1))


class ReadsTarget(nn.Module):
    """y1 (Bernoulli target) -> z (latent) -> y2 ~ Normal(w * y1 + z, 0.1): a later site reads y1."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float(w)))

    def forward(self, n):
        y1 = dgmkd.target("y1", Bernoulli(probs=torch.full((n, 1), 0.3)))
        z = dgmkd.latent("z", Normal(torch.zeros(n, 1), 1.0))
        return dgmkd.target("y2", Normal(self.w * y1 + z, 0.1))


def test_an_unread_target_is_never_drawn():
    torch.manual_seed(0)
    t, s = Decoder(32), Decoder(8)
    state = torch.get_rng_state()
    c = dgmkd.couple(t, s, 64)
    loss = dgmkd.losses.unified(c)  # closed-form Bernoulli KL: reads no value
    loss.backward()
    assert is_pending(c.targets["x"].value)
    # the RNG advanced by the latent's noise only: the same as drawing z's noise alone
    after = torch.get_rng_state()
    torch.set_rng_state(state)
    torch.randn(64, 4)
    assert torch.equal(torch.get_rng_state(), after)


def test_a_read_target_is_drawn_once_and_every_reader_sees_it():
    torch.manual_seed(1)
    t, s = ReadsTarget(2.0), ReadsTarget(1.0)
    c = dgmkd.couple(t, s, 4000)
    y1 = c.targets["y1"].value
    assert not is_pending(y1)  # the teacher's y2 read it
    z = c.latents["z"].value
    # the teacher's y2 was computed from the very draw recorded (and replayed into the student)
    assert torch.allclose(c.targets["y2"].teacher.loc, 2.0 * y1 + z)
    assert torch.allclose(c.targets["y2"].student.loc, 1.0 * y1 + c.student_trace["z"]["value"])
    assert c.student_trace["y1"]["value"] is y1
    # and it is a draw from Bernoulli(0.3): the mean within 4 standard errors
    m, se = float(y1.mean()), (0.3 * 0.7 / 4000) ** 0.5
    assert abs(m - 0.3) < 4 * se
    assert torch.equal(y1, y1.clone())  # no redraw on later reads


def test_a_monte_carlo_divergence_reads_the_value_and_gets_the_drawn_sample():
    torch.manual_seed(2)

    def teacher(n):
        return dgmkd.target("y", Normal(torch.zeros(n, 3), 1.0))

    def student(n):
        return dgmkd.target("y", torch.distributions.StudentT(5.0, torch.zeros(n, 3), 1.0))

    c = dgmkd.couple(teacher, student, 2000)
    assert is_pending(c.targets["y"].value)
    loss = dgmkd.losses.surrogate(c)  # no closed form: one-sample Monte Carlo at the teacher's value
    v = c.targets["y"].value
    assert not is_pending(v)
    pt, ps = c.targets["y"].teacher, c.targets["y"].student
    assert torch.allclose(loss, (pt.log_prob(v) - ps.log_prob(v)).sum(1).mean())
    assert abs(float(v.mean())) < 4 * (1 / 6000) ** 0.5 and abs(float(v.var()) - 1) < 0.1  # a draw of N(0, 1)


def test_the_models_output_is_the_sample_and_plain_after_use():
    torch.manual_seed(3)
    c = dgmkd.couple(Decoder(8), Decoder(8), 5)
    out = c.teacher_output
    assert out.shape == (5, 16) and out.dtype == torch.float32 and is_pending(out)
    doubled = out * 2
    assert type(doubled) is torch.Tensor and torch.equal(doubled, 2 * out)


def test_what_is_not_deferred():
    # a reparameterized target under grad mode carries gradients: sampled at once
    loc = torch.zeros(3, requires_grad=True)
    assert deferred_sample(Normal(loc, 1.0)) is None
    with torch.no_grad():
        assert deferred_sample(Normal(loc, 1.0)) is not None
    # a family whose sample dtype is not known in advance: sampled at once
    assert deferred_sample(torch.distributions.Poisson(torch.ones(3))) is None
    # a Categorical draws int64
    v = deferred_sample(Categorical(logits=torch.zeros(7, 3)))
    assert v.dtype == torch.int64 and v.shape == (7,)
    assert int(v.max()) <= 2 and v.dtype == torch.int64


def test_teacher_grad_targets_keep_their_graph():
    x = torch.randn(6, 2, requires_grad=True)

    def m(x):
        return dgmkd.target("y", Normal(x * 2, 1.0))

    c = dgmkd.couple(m, m, x, teacher_grad=True)
    v = c.targets["y"].value
    assert not is_pending(v) and v.requires_grad
    (g,) = torch.autograd.grad(v.sum(), x)
    assert torch.allclose(g, torch.full_like(g, 2.0))


@pytest.mark.parametrize("fn", [Bernoulli(logits=torch.zeros(3, dtype=torch.float64)),
                                Independent(Normal(torch.zeros(2, 3), 1.0), 1)])
def test_deferred_sample_has_the_distributions_shape_and_dtype(fn):
    with torch.no_grad():
        v = deferred_sample(fn)
        ref = fn.sample()
    assert v.shape == ref.shape and v.dtype == ref.dtype
    _ = v + 0
    assert not is_pending(v)
