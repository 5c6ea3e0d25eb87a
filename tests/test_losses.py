"""The losses of Chen et al. 2023 (Eq. 4, 6, 7) and local distillation, checked against exact values."""

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Categorical, Independent, Normal

import dgmkd
from dgmkd import losses

from dgms import Mixed, TableDGM, exact_losses

SPECS = {
    "bern-cat": [("z1", "bern", 2, ()), ("y1", "target", 3, ("z1",))],
    "interleaved": [
        ("z1", "latent", 3, ()),
        ("y1", "target", 2, ("z1",)),
        ("z2", "bern", 2, ("z1", "y1")),
        ("y2", "target", 3, ("z2", "y1")),
    ],
    "deep": [
        ("z1", "bern", 2, ()),
        ("z2", "latent", 3, ("z1",)),
        ("z3", "bern", 2, ("z2",)),
        ("y", "target", 4, ("z3",)),
    ],
}


@pytest.mark.parametrize("spec", list(SPECS), ids=list(SPECS))
@pytest.mark.parametrize("seed", [0, 1])
def test_prop_3_1_and_monte_carlo_agree_with_enumeration(spec, seed):
    t = TableDGM(SPECS[spec], seed=100 + seed)
    s = TableDGM(SPECS[spec], seed=200 + seed)
    ex = exact_losses(t, s)
    # Prop. 3.1: the surrogate (with KL) upper-bounds the marginal KD loss
    assert ex["marginal"] <= ex["surrogate"] + 1e-12
    torch.manual_seed(seed)
    est = {"surrogate": [], "latent": [], "local": []}
    for _ in range(40):  # noqa
        torch.set_grad_enabled(False)
        c = dgmkd.couple(t, s, 2000)
        est["surrogate"].append(float(losses.surrogate(c)))
        est["latent"].append(float(losses.latent(c)))
        est["local"].append(float(losses.local(dgmkd.couple(t, s, 2000, mode="teacher_forced"))))
    torch.set_grad_enabled(True)
    for k, v in est.items():
        v = np.array(v)
        se = v.std(ddof=1) / np.sqrt(len(v))
        assert abs(v.mean() - ex[k]) < 4 * se + 1e-9, (k, v.mean(), ex[k], se)


def test_surrogate_is_strictly_looser_than_marginal_somewhere():
    # the bound is not an identity: a case where the coupling costs something
    t, s = TableDGM(SPECS["deep"], seed=5), TableDGM(SPECS["deep"], seed=6)
    ex = exact_losses(t, s)
    assert ex["surrogate"] > ex["marginal"] + 1e-3


def test_copy_of_teacher_gives_exactly_zero():
    torch.manual_seed(0)
    t = Mixed()
    s = copy.deepcopy(t)
    x = torch.randn(64, 3)
    c = dgmkd.couple(t, s, x)
    assert float(losses.surrogate(c)) == 0.0
    assert float(losses.latent(c)) == 0.0
    assert float(losses.latent(c, "l2")) == 0.0  # includes the deterministic site
    assert float(losses.unified(c, latent_weight=1.0)) == 0.0
    cl = dgmkd.couple(t, s, x, mode="teacher_forced")
    assert float(losses.local(cl)) == 0.0
    for name in ("kl", "reverse_kl", "w2", "l2", "l1"):
        tc = TableLikeGaussian()
        cc = dgmkd.couple(tc, copy.deepcopy(tc), 32)
        assert float(losses.unified(cc, divergence=name, latent_weight=1.0)) == 0.0, name


class TableLikeGaussian(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 2)
        self.b = nn.Linear(2, 3)

    def forward(self, n):
        z = dgmkd.latent("z", Independent(Normal(torch.zeros(n, 2), 1.0), 1))
        z2 = dgmkd.latent("z2", Normal(self.a(z), 0.5))
        return dgmkd.target("y", Normal(self.b(z2), 0.3))


class Classifier(nn.Module):
    def __init__(self, hidden, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 6))

    def forward(self, x):
        return dgmkd.target("y", Categorical(logits=self.net(x)))


def test_no_latents_surrogate_is_vanilla_kd():
    t, s = Classifier(64, 0), Classifier(8, 1)
    x = torch.randn(128, 4)
    c = dgmkd.couple(t, s, x)
    with torch.no_grad():
        pt = torch.log_softmax(t.net(x), -1)
    ps = torch.log_softmax(s.net(x), -1)
    vanilla = (pt.exp() * (pt - ps)).sum(-1).mean()
    assert torch.allclose(losses.surrogate(c), vanilla, atol=1e-6)
    assert float(losses.latent(c)) == 0.0


class Features(nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.f1, self.f2, self.o = nn.Linear(3, 5), nn.Linear(5, 4), nn.Linear(4, 2)

    def forward(self, x):
        h1 = dgmkd.deterministic("h1", torch.relu(self.f1(x)))
        h2 = dgmkd.deterministic("h2", torch.relu(self.f2(h1)))
        return dgmkd.target("y", Normal(self.o(h2), 1.0))


def test_feature_kd_is_latent_loss_with_l2():
    t, s = Features(0), Features(1)
    x = torch.randn(50, 3)
    c = dgmkd.couple(t, s, x)
    with torch.no_grad():
        t1 = torch.relu(t.f1(x)); t2 = torch.relu(t.f2(t1))
    s1 = torch.relu(s.f1(x)); s2 = torch.relu(s.f2(s1))  # the student's own path
    fitnets = ((t1 - s1) ** 2).sum(-1).mean() + ((t2 - s2) ** 2).sum(-1).mean()
    assert torch.allclose(losses.latent(c, "l2"), fitnets, atol=1e-6)
    # KL-type latent divergences leave point masses out unless told
    assert float(losses.latent(c)) == 0.0
    assert torch.allclose(losses.latent(c, "kl", deterministic="l2"), fitnets, atol=1e-6)
    with pytest.raises(ValueError, match="deterministic"):
        losses.latent(c, "kl", deterministic=True)


class Gate(nn.Module):
    """A discrete latent between the parameters ``gate`` and the target."""

    def __init__(self, seed, discrete=True):
        super().__init__()
        torch.manual_seed(seed)
        self.gate = nn.Linear(2, 3)
        self.head = nn.Linear(3, 2)
        self.discrete = discrete

    def forward(self, x):
        if self.discrete:
            z = dgmkd.latent("z", Independent(Bernoulli(logits=self.gate(x)), 1))
        else:
            z = dgmkd.latent("z", Independent(Normal(self.gate(x), 1.0), 1))
        return dgmkd.target("y", Independent(Normal(self.head(z), 1.0), 1))


def _grads(model):
    return {n: (p.grad is not None and p.grad.abs().sum().item() > 0) for n, p in model.named_parameters()}


@pytest.mark.parametrize("discrete", [True, False])
def test_gradients_reach_what_the_method_says(discrete):
    t, s = Gate(0, discrete), Gate(1, discrete)
    x = torch.randn(256, 2)
    losses.surrogate(dgmkd.couple(t, s, x)).backward()
    g = _grads(s)
    assert g["head.weight"]
    # through a discrete latent the inverse CDF is piecewise constant: no gradient to the gate
    assert g["gate.weight"] == (not discrete)
    s.zero_grad(set_to_none=True)
    losses.unified(dgmkd.couple(t, s, x), latent_weight=0.1).backward()
    assert all(_grads(s).values())  # the latent loss carries the gradient to the gate
    s.zero_grad(set_to_none=True)
    losses.local(dgmkd.couple(t, s, x, mode="teacher_forced")).backward()
    assert all(_grads(s).values())
    assert all(p.grad is None for p in t.parameters())  # never the teacher's


def test_losses_check_the_coupling_mode():
    t, s = Gate(0), Gate(1)
    x = torch.randn(8, 2)
    with pytest.raises(ValueError, match="teacher_forced"):
        losses.local(dgmkd.couple(t, s, x))
    with pytest.raises(ValueError, match="shared_noise"):
        losses.surrogate(dgmkd.couple(t, s, x, mode="teacher_forced"))


def test_unknown_divergence_is_named():
    t, s = Gate(0), Gate(1)
    c = dgmkd.couple(t, s, torch.randn(8, 2))
    with pytest.raises(ValueError, match="unknown divergence 'js'"):
        losses.surrogate(c, "js")


def test_callable_divergence():
    t, s = Gate(0, False), Gate(1, False)
    c = dgmkd.couple(t, s, torch.randn(8, 2))
    mine = losses.surrogate(c, lambda p, q: torch.distributions.kl_divergence(p, q))
    assert torch.allclose(mine, losses.surrogate(c, "kl"))


def test_shape_mismatch_at_a_deterministic_site_is_named():
    class F(nn.Module):
        def __init__(self, w):
            super().__init__()
            self.f = nn.Linear(3, w)

        def forward(self, x):
            dgmkd.deterministic("h", self.f(x))
            return dgmkd.target("y", Normal(x.sum(-1), 1.0))

    c = dgmkd.couple(F(4), F(1), torch.randn(5, 3))  # (5, 1) would broadcast against (5, 4)
    with pytest.raises(dgmkd.SiteMismatchError, match="'h': shape \\(5, 4\\) in the teacher but \\(5, 1\\).*adapter"):
        losses.latent(c, "l2")


@pytest.mark.parametrize("weight", [0.0, 1.0, 2.5, "balanced"])
def test_hybrid_is_local_plus_unified_and_balanced_is_the_gradient_of_the_log_sum(weight):
    from dgmkd.models import MLPDGM

    torch.manual_seed(0)
    t, s = MLPDGM((2, 2), hidden=16), MLPDGM((2, 2), hidden=4)
    shared, forced = dgmkd.couple(t, s, 64), dgmkd.couple(t, s, 64, mode="teacher_forced")
    loc, uni = losses.local(forced), losses.unified(shared, 0.1)
    h = losses.hybrid(shared, forced, local_weight=weight, latent_weight=0.1)
    w = 1.0 if weight == "balanced" else weight
    assert float(h) == pytest.approx(float(w * loc + uni), rel=1e-6)  # the value: nats, as reported
    want = torch.log(loc) + torch.log(uni) if weight == "balanced" else w * loc + uni
    params = list(s.parameters())
    g = torch.autograd.grad(h, params, retain_graph=True)
    g_want = torch.autograd.grad(want, params)
    for a, b in zip(g, g_want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="local_weight"):
        losses.hybrid(shared, forced, local_weight="heavy")
