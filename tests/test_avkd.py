"""AVKD / VKD (Tang & Lin), DAFL and DFAD: the objectives' defining properties, checked on toys."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Independent, Normal

import dgmkd
from dgmkd.methods.avkd import (AVKD, Discriminator, GaussianGenerator, Generator, MLPDiscriminator, disagreement,
                                discriminator_loss, generated_inputs, kd_loss, teacher_log_likelihood, vkd_kl)
from dgmkd.methods.dafl import DAFL, dafl_losses
from dgmkd.methods.dfad import DFAD, logit_gap
from dgmkd.models.classifiers import ResNetClassifier, accuracy, num_params, student_net, teacher_net
from dgmkd.train import fit


pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(k=3, seed=0):
    torch.manual_seed(seed)
    return teacher_net(k).eval(), student_net(k)


# ------------------------------------------------------------------------------ classifiers
def test_classifier_is_a_dgm_whose_surrogate_is_the_kd_loss():
    t, s = _pair(4)
    s.eval()
    assert 3.5 < num_params(t) / num_params(s) < 4.5
    x = torch.rand(6, 1, 8, 8)
    y = t(x)  # outside handlers: a sampled label
    assert y.shape == (6,) and y.dtype == torch.int64
    c = dgmkd.couple(t, s, x)
    pt, ps = F.softmax(t.logits(x), -1), F.log_softmax(s.logits(x), -1)
    by_hand = (pt * (pt.log() - ps)).sum(-1).mean()
    assert torch.allclose(dgmkd.losses.surrogate(c), by_hand, atol=1e-5)
    T = 3.0
    pt, ps = F.softmax(t.logits(x) / T, -1), F.log_softmax(s.logits(x) / T, -1)
    assert torch.allclose(dgmkd.losses.surrogate(c, temperature=T), T * T * (pt * (pt.log() - ps)).sum(-1).mean(),
                          atol=1e-5)
    assert torch.allclose(disagreement(t.logits(x), s.logits(x), T), dgmkd.losses.surrogate(c, temperature=T),
                          atol=1e-6)
    # the same network runs on 28x28 (MNIST) and 3x32x32 (CIFAR-10) inputs
    assert ResNetClassifier(10, 3)(torch.rand(2, 3, 32, 32)).shape == (2,)


def test_accuracy_and_mode_restore():
    t, _ = _pair(3)
    t.train()
    x = torch.rand(10, 1, 8, 8)
    with torch.no_grad():
        t.eval()
        y = t.logits(x).argmax(-1)
        t.train()
    assert accuracy(t, x, y) == 1.0 and t.training


# --------------------------------------------------------------------------------- VKD term
def test_vkd_kl_equals_closed_form():
    torch.manual_seed(0)
    g = GaussianGenerator(4, (1, 8, 8))
    with torch.no_grad():
        g.log_sigma.normal_(-0.5, 0.3)
        g.mu.normal_(0.3, 0.8)
    y = torch.tensor([0, 3, 3, 1, 2])
    q = g.dist(y)
    mu, sig = g.mu[y], g.log_sigma[y].exp()
    closed = 0.5 * (sig ** 2 + mu ** 2 - 1 - 2 * sig.log()).flatten(1).sum(1).mean()
    assert torch.allclose(vkd_kl(q), closed, rtol=1e-5)
    # a general Gaussian prior N(m, s^2 I)
    m, s = 0.5, 0.25
    closed = (torch.log(torch.tensor(s)) - sig.log() + (sig ** 2 + (mu - m) ** 2) / (2 * s * s) - 0.5)
    assert torch.allclose(vkd_kl(q, m, s), closed.flatten(1).sum(1).mean(), rtol=1e-5)
    # and the Monte Carlo form E_q[log q - log p] of Eq. 3.9 agrees
    xs = q.rsample((4000,))
    p = Independent(Normal(torch.zeros_like(mu), 1.0), 3)
    mc = (q.log_prob(xs) - p.log_prob(xs)).mean()
    kl = float(vkd_kl(q).detach())
    assert abs(float(mc.detach()) - kl) < 0.05 * kl + 0.5
    # the generator is a DGM with one latent site "x"
    with dgmkd.handlers.trace() as tr:
        g(y)
    assert list(tr.sites) == ["x"] and tr.sites["x"]["kind"] == "latent"


# ----------------------------------------------------------------------- AVB discriminator
def test_discriminator_optimum_recovers_the_log_density_ratio():
    """Eq. 3.12: the minimizer of the logistic loss is D*(x, y) = log q(x|y) - log p(x).
    Toy: q(x|y) = N(mu_y, 1), p(x) = N(0, 1), so D* = mu_y x - mu_y^2 / 2."""
    torch.manual_seed(0)
    mu = torch.tensor([-1.0, 1.5])
    d = MLPDiscriminator(1, 2, hidden=32)
    opt = torch.optim.Adam(d.parameters(), 1e-2)
    n = 256
    for i in range(1000):
        y = torch.randint(0, 2, (n,))
        xq = (mu[y] + torch.randn(n)).unsqueeze(1)
        xp = torch.randn(n, 1)
        loss = discriminator_loss(d, xq, y, xp, torch.randint(0, 2, (n,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i == 700:
            for g in opt.param_groups:
                g["lr"] = 2e-3
    xs = torch.linspace(-1.5, 1.5, 31).unsqueeze(1)
    for c in range(2):
        yy = torch.full((31,), c)
        got = d(xs, yy).detach()
        want = mu[c] * xs.squeeze(1) - mu[c] ** 2 / 2
        assert (got - want).abs().mean() < 0.2, (c, got, want)
    # the optimal loss is 2 log 2 - 2 JSD < 2 log 2: the discriminator did learn something
    assert float(loss.detach()) < 2 * math.log(2) - 0.1


# ------------------------------------------------------------------------ generator terms
def _avkd(k=3, **kw):
    t, s = _pair(k)
    torch.manual_seed(1)
    return AVKD(t, s, Generator(k), prior_data=torch.rand(64, 1, 8, 8), discriminator=Discriminator(k),
                batch=32, **kw)


def _generator_steps(m, y, n, lr=1e-3):
    opt = torch.optim.Adam(m.generator.parameters(), lr, betas=(0.5, 0.999))
    for _ in range(n):
        loss, _ = m.generator_terms(y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _fixed_eval(m, y, fn):
    torch.manual_seed(123)
    with torch.no_grad():
        x = m.generator(y)
        return fn(x)


def test_adversarial_term_increases_teacher_student_disagreement():
    m = _avkd(w_prior=0.0, w_adv=1.0)
    m.w_recon = 0.0  # the adversarial term alone
    y = torch.arange(3).repeat(11)
    kl = lambda x: float(disagreement(m.teacher.logits(x), m.student.logits(x)))  # noqa: E731
    before = _fixed_eval(m, y, kl)
    _generator_steps(m, y, 30)
    after = _fixed_eval(m, y, kl)
    assert after > 1.5 * before and after > before + 0.01
    assert m.student.head.weight.grad is not None  # it flowed through the student, which is not stepped here


class _Linear(torch.nn.Module):
    """A linear classifier with a strong dependence on x (a freshly initialized CNN is nearly flat)."""

    def __init__(self, k, gain=3.0):
        super().__init__()
        self.num_classes = k
        self.lin = torch.nn.Linear(64, k)
        with torch.no_grad():
            self.lin.weight.mul_(gain)

    def logits(self, x):
        return self.lin(x.flatten(1))


def test_reconstruction_term_raises_teacher_likelihood_of_the_label():
    torch.manual_seed(0)
    m = AVKD(_Linear(3), student_net(3), Generator(3), prior_data=torch.rand(64, 1, 8, 8),
             discriminator=Discriminator(3), batch=32, w_prior=0.0, w_adv=0.0)
    y = torch.arange(3).repeat(11)
    ll = lambda x: float(teacher_log_likelihood(m.teacher.logits(x), y).mean())  # noqa: E731
    before = _fixed_eval(m, y, ll)
    _generator_steps(m, y, 30, lr=1e-2)
    assert _fixed_eval(m, y, ll) > before + 0.1
    assert all(p.grad is None for p in m.teacher.parameters())  # the teacher is frozen


def test_prior_term_is_the_discriminator_and_generator_follows_it():
    """With only the prior term, the generator lowers D(G(y, eps), y): it moves toward the prior data."""
    m = _avkd(w_prior=1.0, w_adv=0.0)
    m.w_recon = 0.0
    y = torch.arange(3).repeat(11)
    for p in m.disc.parameters():
        p.requires_grad_(False)
    dval = lambda x: float(m.disc(x, y).mean())  # noqa: E731
    before = _fixed_eval(m, y, dval)
    loss, terms = m.generator_terms(y)
    assert torch.allclose(terms["prior"], m.disc(terms["x"], y).mean())
    _generator_steps(m, y, 20)
    assert _fixed_eval(m, y, dval) < before


def test_student_step_is_vanilla_kd_and_reduces_it():
    t, s = _pair(3)
    x = torch.rand(32, 1, 8, 8)
    s.train()
    assert torch.allclose(kd_loss(t, s, x, temperature=2.0), disagreement(t.logits(x), s.logits(x), 2.0), atol=1e-5)
    first = float(kd_loss(t, s, x).detach())
    fit(lambda a, k: kd_loss(t, s, x), s, 1, 40, lr=1e-2, progress=False)
    assert float(kd_loss(t, s, x).detach()) < 0.5 * first


def test_avkd_algorithm_runs_and_resumes(tmp_path):
    m = _avkd(n_student=2)
    hist = m.fit(4, progress=False, checkpoint=tmp_path / "ck.pt", seed=0)
    # 4 iterations: 4 generator and discriminator steps, 8 student steps
    assert len(hist["step"]) == 8 and len(hist["discriminator.loss"]) == 4
    assert all(np.isfinite(hist["discriminator.loss"]))
    m2 = _avkd(n_student=2)
    h2 = m2.fit(4, progress=False, checkpoint=tmp_path / "ck.pt", seed=0)  # already complete: loads and stops
    assert h2["generator.loss"] == hist["generator.loss"]
    assert torch.equal(next(m2.generator.parameters()), next(m.generator.parameters()))
    with pytest.raises(ValueError, match="both"):
        AVKD(m.teacher, m.student, Generator(3), prior_data=torch.rand(4, 1, 8, 8))


def test_vkd_mode_and_generated_inputs_feed_distill():
    t, s = _pair(3)
    m = AVKD(t, s, GaussianGenerator(3), batch=16, n_student=1)
    assert m.mode == "vkd"
    h = m.fit(3, progress=False)
    assert "discriminator.loss" not in h and len(h["generator.prior"]) == 3
    g = Generator(3)
    supply = generated_inputs(g, 8)
    x = supply()
    assert x.shape == (8, 1, 8, 8) and not x.requires_grad and 0 <= float(x.min()) and float(x.max()) <= 1
    hist = dgmkd.distill(t, student_net(3), inputs=supply, steps=3, progress=False,
                         method=lambda c: dgmkd.losses.surrogate(c))
    assert len(hist["loss"]) == 3
    with dgmkd.handlers.trace() as tr:
        g(torch.tensor([0, 1]))
    assert [(n, v["kind"]) for n, v in tr.sites.items()] == [("eps", "latent"), ("x", "deterministic")]


# ----------------------------------------------------------------------------------- DAFL
def test_dafl_losses_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 1.0]])
    feats = torch.tensor([[1.0, -2.0], [0.5, 0.5]])
    d = dafl_losses(logits, feats)
    assert torch.allclose(d["oh"], F.cross_entropy(logits, torch.tensor([0, 1])))
    assert torch.allclose(d["act"], torch.tensor(-1.0))
    p = F.softmax(logits, -1).mean(0)
    assert torch.allclose(d["ie"], (p * torch.log10(p)).sum())
    # the information-entropy loss is smallest (-log10 K) when the batch-mean prediction is uniform
    assert torch.allclose(dafl_losses(torch.eye(3) * 5, feats.repeat(2, 1)[:3])["ie"], torch.tensor(-math.log10(3)),
                          atol=1e-6)
    t, s = _pair(3)
    with pytest.raises(ValueError, match="unconditional"):
        DAFL(t, s, Generator(3))
    h = DAFL(t, s, Generator(0), batch=8).fit(2, progress=False)
    assert len(h["generator.oh"]) == 2 and len(h["student.loss"]) == 2


# ----------------------------------------------------------------------------------- DFAD
def test_dfad_gap_and_the_min_max_game():
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    assert torch.allclose(logit_gap(a, b), F.l1_loss(b, a))
    t, s = _pair(3)
    torch.manual_seed(2)
    m = DFAD(t, s, Generator(0), batch=32, lr_g=1e-2, lr_s=1e-2)

    def gap():
        torch.manual_seed(7)
        with torch.no_grad():
            x = m.generator(32)
            return float(logit_gap(m.teacher.logits(x), m.student.logits(x)))

    g0 = gap()
    opt = torch.optim.Adam(m.generator.parameters(), 1e-2)
    for _ in range(15):
        opt.zero_grad()
        m.generator_loss()["loss"].backward()
        opt.step()
    g1 = gap()
    assert g1 > g0  # the generator maximizes the L1 logit gap
    opt = torch.optim.Adam(m.student.parameters(), 1e-2)
    for _ in range(30):
        opt.zero_grad()
        m.student_loss()["loss"].backward()
        opt.step()
    assert gap() < g1  # the student minimizes it
    h = m.fit(2, progress=False)
    assert set(h) == {"step", "student.loss", "generator.loss", "generator.gap"}
    assert len(h["student.loss"]) == 10 and len(h["generator.gap"]) == 2


# ------------------------------------------------------------------------------ experiment
def test_experiment_data_and_report(tmp_path):
    from dgmkd.config import ConfigError, override
    from dgmkd.data.patches import natural_patches
    from dgmkd.experiments import avkd as exp

    p = natural_patches(50, seed=1)
    assert p.shape == (50, 1, 8, 8) and float(p.min()) == 0.0 and float(p.max()) == 1.0
    cfg = exp.Config(n_patches=50)
    a = exp.task_data("A", cfg)
    assert a["k"] == 5 and int(a["ytr"].max()) == 4 and len(a["prior"]) > 800
    assert len(exp.task_data("B", cfg)["prior"]) == 50
    rows = [{"task": t, "seed": s, "method": m, "accuracy": acc, "seconds": 1.0}
            for t in ("A", "B") for s in range(3)
            for m, acc in (("teacher", 99.0), ("kd", 95.0 + s), ("dafl", 50.0), ("avkd", 90.0))]
    dgmkd.harness.write_csv(tmp_path / "results.csv", rows)
    dgmkd.harness.write_json(tmp_path / "config.json", {"seeds": [0, 1, 2]})
    info = {"tasks": {t: {"classes": 5, "train": 1, "test": 1, "prior_images": 1, "teacher_params": 4,
                          "student_params": 1} for t in "AB"}, "final_terms": {}, "seconds_total": 6.0}
    dgmkd.harness.write_json(tmp_path / "info.json", info)
    torch.save({"A/real": torch.rand(25, 1, 8, 8), "A/avkd": torch.rand(25, 1, 8, 8)}, tmp_path / "images.pt")
    text = exp.report(tmp_path)
    assert "| Student | KD (real inputs) | N/A | 96.00 ± 1.00 |" in text
    assert "| Student | AVKD (ours in the paper) | digits 5-9 (unlabeled) | 90.00 ± 0.00 | natural 8x8 patches" in text
    assert "DAFL 50.00% (AVKD higher)" in text and "6.00 points below KD with the real inputs" in text
    assert (tmp_path / "samples_A.png").exists() and "goal" not in text.lower()
    with pytest.raises(ConfigError, match="methods"):
        override(exp.Config(), ["methods=avkd,foo"])


@pytest.mark.slow
def test_avkd_beats_dafl_and_noise_with_a_related_prior(tmp_path):
    """docs/avkd.md: on task A (prior data: the unlabeled digits 5-9) AVKD's student is far more
    accurate than DAFL's and than KD on Gaussian noise, with the same number of student updates."""
    from dgmkd.config import to_dict
    from dgmkd.experiments import avkd as exp

    cfg = exp.Config(tasks=("A",), seeds=(0,), methods=("teacher", "gaussian", "dafl", "avkd"), iters=400,
                     progress=False)
    dgmkd.harness.write_json(tmp_path / "config.json", to_dict(cfg))
    exp.run(cfg, tmp_path)
    acc = {r["method"]: r["accuracy"] for r in dgmkd.harness.read_csv(tmp_path / "results.csv")}
    assert acc["avkd"] > acc["dafl"] + 5 and acc["avkd"] > acc["gaussian"] + 20, acc
