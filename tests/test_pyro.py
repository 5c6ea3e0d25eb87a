"""Pyro models through the adapter: same couple and losses; Prop. 3.1 against quadrature +
enumeration on a model with a continuous and a discrete latent."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

import dgmkd
import dgmkd.pyro
from dgmkd import losses


class Model(nn.Module):
    """z ~ N(m, s); b | z ~ Bernoulli(sigmoid(a z + c)); y | z, b ~ Categorical(softmax(W[b] + v z))."""

    def __init__(self, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        r = lambda *sh: torch.randn(*sh, generator=g, dtype=torch.float64)  # noqa: E731
        self.m, self.log_s = nn.Parameter(0.5 * r(())), nn.Parameter(0.3 * r(()))
        self.a, self.c = nn.Parameter(2 * r(())), nn.Parameter(r(()))
        self.W, self.v = nn.Parameter(1.5 * r(2, 3)), nn.Parameter(r(3))

    def forward(self, n):
        with pyro.plate("batch", n):
            z = pyro.sample("z", dist.Normal(self.m, self.log_s.exp()))
            b = pyro.sample("b", dist.Bernoulli(logits=self.a * z + self.c))
            return pyro.sample("y", dist.Categorical(logits=self.W[b.long()] + self.v * z.unsqueeze(-1)), obs=None)

    # exact quantities -------------------------------------------------------------
    @torch.no_grad()
    def parts(self, eps):
        z = self.m + self.log_s.exp() * eps
        pb = torch.sigmoid(self.a * z + self.c)
        py = torch.stack([torch.softmax(self.W[k] + self.v * z.unsqueeze(-1), -1) for k in (0, 1)])  # (2, n, 3)
        return pb.numpy(), py.numpy()


def exact(t, s, nodes=120):
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    eps = torch.tensor(x)
    pbt, pyt = t.parts(eps)
    pbs, pys = s.parts(eps)
    kl = lambda p, q: (p * (np.log(p) - np.log(q))).sum(-1)  # noqa: E731
    marg_t = (w[:, None] * ((1 - pbt)[:, None] * pyt[0] + pbt[:, None] * pyt[1])).sum(0)
    marg_s = (w[:, None] * ((1 - pbs)[:, None] * pys[0] + pbs[:, None] * pys[1])).sum(0)
    # quantile coupling of b: b = 1[u >= 1 - p]; P(bT=1, bS=1) = min(pT, pS) etc.
    p11 = np.minimum(pbt, pbs)
    p10, p01 = pbt - p11, pbs - p11
    p00 = 1 - p11 - p10 - p01
    sur = (w * (p00 * kl(pyt[0], pys[0]) + p11 * kl(pyt[1], pys[1]) + p10 * kl(pyt[1], pys[0])
                + p01 * kl(pyt[0], pys[1]))).sum()
    return float(kl(marg_t, marg_s)), float(sur)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prop_3_1_on_a_pyro_model(seed):
    t, s = Model(10 + seed), Model(20 + seed)
    marginal, sur = exact(t, s)
    assert marginal <= sur
    T, S = dgmkd.pyro.model(t, targets=["y"]), dgmkd.pyro.model(s, targets=["y"])
    torch.manual_seed(seed)
    with torch.no_grad():
        est = np.array([float(losses.surrogate(dgmkd.couple(T, S, 4000))) for _ in range(30)])
    se = est.std(ddof=1) / np.sqrt(len(est))
    assert abs(est.mean() - sur) < 4 * se


def test_observed_sites_are_targets_and_keep_their_values():
    def m(n):
        z = pyro.sample("z", dist.Normal(torch.zeros(n), 1.0))
        x = pyro.sample("x", dist.Normal(z, 0.1), obs=torch.full((n,), 99.0))
        return pyro.sample("w", dist.Normal(x, 0.1))  # a later site sees the observed value

    c = dgmkd.couple(dgmkd.pyro.model(m), dgmkd.pyro.model(m), 8)
    assert list(c.targets) == ["x"] and list(c.latents) == ["z", "w"]
    assert torch.equal(c.targets["x"].value, torch.full((8,), 99.0))
    assert torch.equal(c.student_trace["x"]["value"], torch.full((8,), 99.0))
    assert bool((c.latents["w"].value > 90).all())
    assert float(losses.unified(c)) == 0.0
    with torch.no_grad():  # outside couple too
        assert bool((dgmkd.pyro.model(m)(8) > 90).all())


def test_outer_pyro_trace_still_records():
    def m(n):
        return pyro.sample("z", dist.Normal(torch.zeros(n), 1.0))

    with poutine.trace() as tr:
        with dgmkd.handlers.trace() as dt, dgmkd.handlers.draw_noise():
            dgmkd.pyro.model(m)(3)
    assert torch.equal(tr.trace.nodes["z"]["value"], dt.sites["z"]["value"])


def test_distill_a_pyro_student():
    t, s = Model(0), Model(1)
    T, S = dgmkd.pyro.model(t, targets=["y"]), dgmkd.pyro.model(s, targets=["y"])
    assert isinstance(S, nn.Module) and {id(p) for p in S.parameters()} == {id(p) for p in s.parameters()}
    h = dgmkd.distill(T, S, 512, steps=150, lr=3e-2, progress=False)
    assert np.mean(h["loss"][-10:]) < 0.5 * np.mean(h["loss"][:10])
    assert all(p.grad is None for p in t.parameters())


# ---------------------------------------------------------------------------- a VAE-like model as a bound method
class VAE(nn.Module):
    """Pyro's examples/vae shape: ``model`` and ``guide`` are methods; the model registers its decoder
    with ``pyro.module`` under a fixed name."""

    def __init__(self, z_dim, hidden, x_dim=6, name="decoder"):
        super().__init__()
        self.z_dim, self.name = z_dim, name
        self.decoder = nn.Sequential(nn.Linear(z_dim, hidden), nn.Tanh(), nn.Linear(hidden, x_dim))
        self.encoder = nn.Linear(x_dim, 2 * z_dim)

    def model(self, x):
        pyro.module(self.name, self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1))
            return pyro.sample("obs", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):  # never run by distillation; its encoder must not get gradients
        pyro.module("encoder", self.encoder)
        loc, log_s = self.encoder(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("latent", dist.Normal(loc, log_s.exp()).to_event(1))


def test_a_bound_method_of_a_module_comes_back_as_that_module():
    pyro.clear_param_store()
    vae = VAE(2, 8)
    m = dgmkd.pyro.model(vae.model)
    assert isinstance(m, nn.Module)
    assert {id(p) for p in m.parameters()} == {id(p) for p in vae.parameters()}
    x = torch.bernoulli(torch.full((5, 6), 0.5))
    assert torch.equal(m(x), x)  # the observed pixels keep their value
    with pytest.raises(TypeError, match="list of site names"):
        dgmkd.pyro.model(vae.model, targets="obs")


def test_distill_a_vae_given_as_bound_methods():
    pyro.clear_param_store()
    torch.manual_seed(0)
    teacher, student = VAE(2, 32), VAE(2, 4, name="student_decoder")
    x = torch.bernoulli(torch.full((256, 6), 0.5))  # only its shape matters: the KL at "obs" is value-free
    T, S = dgmkd.pyro.model(teacher.model), dgmkd.pyro.model(student.model)
    before = [p.detach().clone() for p in student.decoder.parameters()]
    h = dgmkd.distill(T, S, [(x,)], steps=150, lr=3e-2, progress=False)
    assert np.mean(h["loss"][-10:]) < 0.5 * np.mean(h["loss"][:10])
    assert any(not torch.equal(a, b) for a, b in zip(before, student.decoder.parameters()))
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None or not p.grad.any() for p in student.encoder.parameters())


def test_a_plain_function_student_is_a_clear_error():
    def m(n):
        return pyro.sample("z", dist.Normal(torch.zeros(n), 1.0))

    with pytest.raises(TypeError, match="nn.Module.*bound method"):
        dgmkd.distill(dgmkd.pyro.model(m), dgmkd.pyro.model(m), 4, steps=1, progress=False)


# ---------------------------------------------------------------------------- conditioning
def chain(shift):
    def m(n):
        z = pyro.sample("z", dist.Normal(torch.zeros(n), 1.0))
        return pyro.sample("y", dist.Normal(z + shift, 0.1), obs=None)
    return m


@pytest.mark.parametrize("where", ["inside", "outside"])
def test_a_conditioned_latent_keeps_its_value_in_and_out_of_couple(where):
    v = torch.tensor([5.0, -5.0, 5.0])

    def conditioned(shift):
        if where == "inside":
            return dgmkd.pyro.model(poutine.condition(chain(shift), {"z": v}), targets=["y"])
        return poutine.condition(dgmkd.pyro.model(chain(shift), targets=["y"]), {"z": v})

    t, s = conditioned(0.0), conditioned(1.0)
    torch.manual_seed(0)
    y = t(3)  # outside couple: y ~ N(z, 0.1) at the clamped z
    assert torch.allclose(y, v, atol=0.5)
    c = dgmkd.couple(t, s, 3)
    assert list(c.latents) == [] and list(c.targets) == ["z", "y"]
    assert torch.equal(c.targets["z"].value, v) and torch.equal(c.student_trace["z"]["value"], v)
    # both conditionals of y are computed at the clamped z: KL(N(v, .1) || N(v + 1, .1)) = 50 per variable
    assert torch.allclose(c.targets["y"].teacher.loc, v) and torch.allclose(c.targets["y"].student.loc, v + 1)
    assert float(losses.surrogate(c)) == pytest.approx(50.0, rel=1e-5)
    with poutine.trace() as tr:  # an outer Pyro trace sees the same value
        t(3)
    assert torch.equal(tr.trace.nodes["z"]["value"], v)


def test_outer_replay_is_an_error_naming_the_site():
    tr = poutine.trace(chain(0.0)).get_trace(3)
    with pytest.raises(ValueError, match="site 'z'.*inside"):
        poutine.replay(dgmkd.pyro.model(chain(0.0)), trace=tr)(3)


# ---------------------------------------------------------------------------- the global parameter store
def test_shared_param_store_names_warn_naming_the_name():
    pyro.clear_param_store()
    x = torch.zeros(4, 6)
    teacher, student = VAE(2, 8), VAE(2, 3)  # both call pyro.module("decoder", ...)
    T, S = dgmkd.pyro.model(teacher.model), dgmkd.pyro.model(student.model)
    with pytest.warns(dgmkd.pyro.SharedParamStoreWarning, match=r"'decoder\$\$\$0\.weight'.*another dgmkd.pyro model \(VAE\.model\)"):
        dgmkd.couple(T, S, x)
    # a plain pyro.param shared by two bridged functions
    pyro.clear_param_store()

    def pm(n):
        w = pyro.param("w", torch.zeros(()))
        return pyro.sample("z", dist.Normal(torch.zeros(n) + w, 1.0))

    with pytest.warns(dgmkd.pyro.SharedParamStoreWarning, match="'w'"):
        dgmkd.couple(dgmkd.pyro.model(pm), dgmkd.pyro.model(pm), 2)


def test_distinct_param_store_names_do_not_warn():
    import warnings

    pyro.clear_param_store()
    x = torch.zeros(4, 6)
    T = dgmkd.pyro.model(VAE(2, 8).model)
    S = dgmkd.pyro.model(VAE(2, 3, name="student_decoder").model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", dgmkd.pyro.SharedParamStoreWarning)
        for _ in range(3):  # the same model registering its own tensors again is not sharing
            dgmkd.couple(T, S, x)


# ---------------------------------------------------------------------------- a Gamma latent model (sparse gamma DEF-like)
class GammaDEF(nn.Module):
    """Two Gamma layers and Poisson counts, as in Pyro's sparse_gamma_def.py (weights as parameters):
    z_top ~ Gamma(a_top, b_top); z_mid | z_top ~ Gamma(a_mid, a_mid / (z_top W1)); x | z_mid ~ Poisson(z_mid W2)."""

    def __init__(self, seed, k_top=2, k_mid=4, d=6):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        r = lambda *sh: 0.5 * torch.randn(*sh, generator=g)  # noqa: E731
        self.a_top, self.b_top, self.a_mid = nn.Parameter(r(k_top)), nn.Parameter(r(k_top)), nn.Parameter(r(k_mid) + 1)
        self.W1, self.W2 = nn.Parameter(r(k_top, k_mid)), nn.Parameter(r(k_mid, d))

    def forward(self, n):
        sp = nn.functional.softplus
        with pyro.plate("data", n):
            zt = pyro.sample("z_top", dist.Gamma(sp(self.a_top).expand(n, -1), sp(self.b_top).expand(n, -1)).to_event(1))
            a = sp(self.a_mid)
            zm = pyro.sample("z_mid", dist.Gamma(a.expand(n, -1), a / (zt @ sp(self.W1))).to_event(1))
            return pyro.sample("x", dist.Poisson(zm @ sp(self.W2)).to_event(1), obs=None)


def test_a_gamma_latent_model_distills_with_gradients_for_shape_and_rate():
    torch.manual_seed(0)
    teacher, student = GammaDEF(0), GammaDEF(1)
    T, S = dgmkd.pyro.model(teacher, targets=["x"]), dgmkd.pyro.model(student, targets=["x"])
    c = dgmkd.couple(T, S, 256)
    assert list(c.latents) == ["z_top", "z_mid"]
    losses.unified(c).backward()
    for name in ("a_top", "b_top", "a_mid"):  # the Gamma shapes and rate
        g = getattr(student, name).grad
        assert g is not None and bool(torch.isfinite(g).all()) and bool((g != 0).all()), name
    # the surrogate alone reaches the shapes too: through z = F^{-1}(u; shape) / rate on the student's path
    student.zero_grad()
    losses.surrogate(dgmkd.couple(T, S, 256)).backward()
    assert bool((student.a_top.grad != 0).all()) and bool((student.a_mid.grad != 0).all())
    student.zero_grad()
    h = dgmkd.distill(T, S, 128, steps=100, lr=5e-2, progress=False)
    assert np.isfinite(h["loss"]).all()
    assert np.mean(h["loss"][-10:]) < 0.5 * np.mean(h["loss"][:10])
