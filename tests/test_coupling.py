"""couple(): shared noise, teacher forcing, and errors that name mismatched sites."""

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Categorical, Laplace, Normal

import dgmkd
from dgmkd.handlers import SiteMismatchError


def chain(scale=1.0, width=2, extra=False, kind="latent", dist=Normal, rename=None):
    lin = nn.Linear(width, width)

    def model(n):
        eps_site = dgmkd.latent if kind == "latent" else dgmkd.target
        z1 = dgmkd.latent(rename or "z1", dist(torch.zeros(n, width), scale))
        z2 = eps_site("z2", Normal(lin(z1), 0.5))
        if extra:
            dgmkd.latent("z3", Normal(z2, 1.0))
        return dgmkd.target("y", Normal(z2.sum(-1), 0.1))

    model.lin = lin
    return model


def test_shared_noise_each_model_on_its_own_path():
    t, s = chain(1.0), chain(3.0)
    c = dgmkd.couple(t, s, 16)
    z1 = c.latents["z1"]
    assert torch.equal(z1.noise, c.student_trace["z1"]["noise"])
    assert torch.allclose(c.student_trace["z1"]["value"], 3.0 * z1.noise)  # student's own g(params, eps)
    assert torch.allclose(z1.value, z1.noise)
    # the student's z2 conditional is computed at the student's own z1
    assert torch.allclose(c.latents["z2"].student.loc, s.lin(3.0 * z1.noise))
    # targets are teacher-forced
    assert torch.equal(c.student_trace["y"]["value"], c.targets["y"].value)
    assert list(c.sites()) == ["z1", "z2", "y"]


def test_teacher_forced_evaluates_student_at_teacher_parents():
    t, s = chain(1.0), chain(3.0)
    c = dgmkd.couple(t, s, 16, mode="teacher_forced")
    zt = c.latents["z1"].value
    assert torch.equal(c.student_trace["z1"]["value"], zt)
    assert torch.allclose(c.latents["z2"].student.loc, s.lin(zt))


def test_teacher_runs_without_grad_student_with():
    t, s = chain(), chain()
    c = dgmkd.couple(t, s, 4)
    assert not c.targets["y"].teacher.loc.requires_grad
    assert c.targets["y"].student.loc.requires_grad


def test_teacher_grad_differentiates_through_the_teacher_to_its_inputs():
    # a classifier pair on inputs x: the disagreement's gradient w.r.t. x has a teacher part and a
    # student part; with teacher_grad=True it is the gradient of the directly computed KL
    torch.manual_seed(0)
    ft, fs = nn.Linear(3, 4), nn.Linear(3, 4)
    ft.requires_grad_(False)

    def clf(f):
        return lambda x: dgmkd.target("y", Categorical(logits=f(x)))

    x = torch.randn(5, 3, requires_grad=True)
    loss = dgmkd.losses.surrogate(dgmkd.couple(clf(ft), clf(fs), x, teacher_grad=True))
    (g,) = torch.autograd.grad(loss, x)
    x2 = x.detach().clone().requires_grad_(True)
    pt, ps = ft(x2).log_softmax(-1), fs(x2).log_softmax(-1)
    ref = (pt.exp() * (pt - ps)).sum(-1).mean()
    (g_ref,) = torch.autograd.grad(ref, x2)
    assert torch.allclose(loss, ref) and torch.allclose(g, g_ref, atol=1e-6)
    # without it the teacher is a constant: only the student part of the gradient remains
    (g_s,) = torch.autograd.grad(dgmkd.losses.surrogate(dgmkd.couple(clf(ft), clf(fs), x)), x)
    assert not torch.allclose(g_s, g_ref, atol=1e-4)


def test_discrete_latents_share_one_uniform():
    def m(p):
        def run(n):
            return dgmkd.target("y", Normal(dgmkd.latent("b", Bernoulli(torch.full((n,), p))), 1.0))
        return run

    torch.manual_seed(0)
    c = dgmkd.couple(m(0.3), m(0.6), 20000)
    bt, bs = c.latents["b"].value, c.student_trace["b"]["value"]
    # quantile coupling: b_T <= b_S always, P(b_T != b_S) = 0.3
    assert bool((bt <= bs).all())
    assert abs((bt != bs).float().mean().item() - 0.3) < 0.02


@pytest.mark.parametrize("student,match", [
    (chain(extra=True), "exists in the student but not in the teacher"),
    (chain(kind="target"), "latent in the teacher but a target in the student"),
    (chain(width=3), "shape"),
    (chain(dist=Laplace), "standard_normal noise but the student's Laplace uses standard_uniform"),
    (chain(rename="w1"), "'w1'"),
])
def test_mismatched_sites_are_named(student, match):
    with pytest.raises(SiteMismatchError, match=match):
        dgmkd.couple(chain(), student, 4)


def test_site_missing_in_student_is_named():
    with pytest.raises(SiteMismatchError, match=r"\['z3'\] exist in the teacher but not in the student"):
        dgmkd.couple(chain(extra=True), chain(), 4)


def test_categorical_with_different_category_count():
    def m(k):
        def run(n):
            z = dgmkd.latent("z", Categorical(logits=torch.zeros(n, k)))
            return dgmkd.target("y", Normal(z.float(), 1.0))
        return run

    # one uniform per variable: the noise fits both; a different number of categories is allowed
    c = dgmkd.couple(m(3), m(5), 8)
    assert c.latents["z"].student.probs.shape == (8, 5)


def test_duplicate_site_name():
    def m(n):
        dgmkd.latent("z", Normal(torch.zeros(n), 1.0))
        dgmkd.latent("z", Normal(torch.zeros(n), 1.0))

    with pytest.raises(ValueError, match="'z' is used twice"):
        dgmkd.couple(m, m, 2)


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown coupling mode 'local'"):
        dgmkd.couple(chain(), chain(), 2, mode="local")


def test_unsupported_latent_type_is_named():
    from torch.distributions import VonMises

    def m(n):
        return dgmkd.latent("g", VonMises(torch.zeros(n), 1.0))

    with pytest.raises(dgmkd.UnsupportedDistributionError, match="VonMises"):
        dgmkd.couple(m, m, 2)


def test_handler_stack_is_clean_after_errors():
    from dgmkd import sites

    with pytest.raises(SiteMismatchError):
        dgmkd.couple(chain(), chain(extra=True), 2)
    assert sites._STACK == []


@pytest.mark.parametrize("mode", ["shared_noise", "teacher_forced"])
@pytest.mark.parametrize("kind", ["latent", "target"])
def test_a_narrower_student_site_is_an_error_not_a_broadcast(mode, kind):
    """A student site declared (n, 1) against the teacher's (n, 2) would broadcast the teacher's
    noise or value into a (n, 2) tensor and pass every later shape check."""
    def model(width_z, width_y):
        def f(n):
            z = dgmkd.latent("z", Normal(torch.zeros(n, width_z if kind == "latent" else 2), 1.0))
            return dgmkd.target("y", Normal(z.sum(-1, keepdim=True).expand(n, width_y if kind == "target" else 2), 1.0))
        return f

    teacher, student = model(2, 2), model(1, 1)
    with pytest.raises(SiteMismatchError, match=rf"{kind} site '{'z' if kind == 'latent' else 'y'}'.*\(8, 1\).*\(8, 2\)"):
        dgmkd.couple(teacher, student, 8, mode=mode)


@pytest.mark.parametrize("n", [3, 5])
def test_independent_in_one_model_only_gives_the_plain_loss(n):
    """Teacher target wrapped in Independent, student's not: the same loss as both plain, also
    when the batch size equals the event size (where broadcasting would have mixed them)."""
    from torch.distributions import Independent

    torch.manual_seed(0)
    mu_t, mu_s = torch.randn(n, 3), torch.randn(n, 3)

    def wrapped(n_):
        return dgmkd.target("y", Independent(Normal(mu_t, 0.5), 1))

    def plain_t(n_):
        return dgmkd.target("y", Normal(mu_t, 0.5))

    def plain_s(n_):
        return dgmkd.target("y", Normal(mu_s, 0.7))

    for div in ("kl", "reverse_kl", "w2"):
        a = dgmkd.losses.surrogate(dgmkd.couple(wrapped, plain_s, n), div)
        b = dgmkd.losses.surrogate(dgmkd.couple(plain_t, plain_s, n), div)
        assert torch.allclose(a, b), (div, a, b)
