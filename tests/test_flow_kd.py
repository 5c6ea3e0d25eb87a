"""Flow distillation (Walton et al.) in the unified vocabulary: SKD is the surrogate loss with a
distance at a Delta target, ILKD/LKD the latent loss on deterministic sites."""

import math

import numpy as np
import pytest
import torch

from dgmkd import losses
from dgmkd.methods.flow_kd import WEIGHTS, FlowSites, couple, evaluate_nll, fit, flow_kd_loss, state_map
from dgmkd.models.flows import Glow, maf, realnvp

torch.set_num_threads(1)


def _pair(kind, dim=4):
    torch.manual_seed(0)
    if kind == "maf":
        return maf(dim, steps=4, hidden=8), maf(dim, steps=2, hidden=8)
    if kind == "realnvp":
        return realnvp(dim, steps=6, hidden=8), realnvp(dim, steps=3, hidden=8)
    t = Glow((dim, 1, 1), levels=1, steps=6, hidden=16, squeeze=False)
    s = Glow((dim, 1, 1), levels=1, steps=2, hidden=8, squeeze=False)
    x = torch.randn(64, dim)
    t.forward_states(x), s.forward_states(x)
    return t, s


def test_state_map_defaults():
    t, s = _pair("realnvp")
    assert state_map(t, s) == [(1, 0), (3, 1)]  # every 2nd teacher step; the last is z
    gt = Glow((1, 8, 8), levels=2, steps=4, hidden=8)
    gs = Glow((1, 8, 8), levels=2, steps=2, hidden=8)
    # per level: teacher steps 1, 3 -> student 0, 1 (level 1's output is matched), then level 2
    assert state_map(gt, gs) == [(1, 0), (3, 1), (5, 2)]
    assert state_map(gt, gs, every=1) == [(0, 0), (3, 1), (4, 2)]
    with pytest.raises(ValueError):
        state_map(gt, Glow((1, 8, 8), levels=1, steps=2, hidden=8))


@pytest.mark.parametrize("kind", ["maf", "realnvp", "glow"])
def test_ilkd_is_the_latent_loss_on_deterministic_sites(kind):
    t, s = _pair(kind)
    x = torch.randn(16, 4)
    pairs = state_map(t, s)
    c = couple(t, s, x)
    _, _, ts = t.forward_states(x)
    zt = t.to_noise(x)
    zs, _, ss = s.forward_states(x)
    direct = sum((ts[a] - ss[b]).abs().sum(1).mean() for a, b in pairs) + (zt - zs).abs().sum(1).mean()
    torch.testing.assert_close(losses.latent(c, "l1"), direct)
    torch.testing.assert_close(losses.latent(c, "l1", sites=["z"]), (zt - zs).abs().sum(1).mean())
    # gradients reach the student only, through the latent loss
    losses.latent(c, "l1").backward()
    assert all(p.grad is None for p in t.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s.parameters())


@pytest.mark.parametrize("kind", ["maf", "glow"])
def test_skd_is_the_surrogate_loss_with_a_distance(kind):
    t, s = _pair(kind)
    T = 0.7
    c = couple(t, s, None, n_prior=32, temperature=T)
    eps = c.latents["prior"].noise
    assert eps.shape == (32, 4)
    z = T * eps  # the shared prior draw, reparameterized from the shared noise
    torch.testing.assert_close(c.latents["prior"].value, z)
    direct = (t.from_noise(z) - s.from_noise(z)).abs().sum(1).mean()
    torch.testing.assert_close(losses.surrogate(c, "l1"), direct, atol=1e-5, rtol=1e-5)
    # identical teacher and student: SKD vanishes
    c2 = couple(t, t, None, n_prior=8)
    assert float(losses.surrogate(c2, "l1")) == 0.0


def test_multiscale_skd_shares_every_split_latent():
    torch.manual_seed(0)
    t, s = Glow((1, 8, 8), levels=2, steps=2, hidden=8), Glow((1, 8, 8), levels=2, steps=1, hidden=8)
    c = couple(t, s, torch.rand(4, 1, 8, 8) - 0.5, n_prior=4)
    assert c.latents["prior"].noise.shape == (4, 64)  # both split pieces are in the shared latent
    zs, _, _ = s.forward_states(s.from_noise(c.latents["prior"].value))
    torch.testing.assert_close(zs, c.latents["prior"].value, atol=1e-4, rtol=1e-4)


def test_eq15_combination_and_nll():
    t, s = _pair("glow")
    x = torch.randn(16, 4)
    c = couple(t, s, x, n_prior=16)
    loss, parts = flow_kd_loss(c, WEIGHTS["skd"])
    nll = -s.log_prob(x).mean()
    assert math.isclose(parts["nll"], float(nll), rel_tol=1e-5)
    expect = 0.85 * parts["nll"] + 0.075 * parts["ilkd"] + 0.075 * parts["skd"]
    assert math.isclose(float(loss), expect, rel_tol=1e-5)
    loss_l, _ = flow_kd_loss(c, (1.0, 1.0, 0.0), l1_term="lkd")
    assert math.isclose(float(loss_l), parts["nll"] + parts["lkd"], rel_tol=1e-5)


def test_ilkd_reduces_distance_to_teacher_and_fit_restores_best():
    torch.manual_seed(0)
    x = torch.randn(512, 3) @ torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 0.5]])
    t = maf(3, steps=4, hidden=16)
    fit(t, x, 150, lr=3e-3, batch=128)
    s0, s1 = maf(3, steps=2, hidden=8), maf(3, steps=2, hidden=8)
    s1.load_state_dict(s0.state_dict())
    fit(s0, x, 60, lr=3e-3, batch=128, seed=1)
    h = fit(s1, x, 60, teacher=t, method="ilkd", lr=3e-3, batch=128, seed=1, x_val=x[:128], eval_every=20)
    d0 = (t.to_noise(x) - s0.to_noise(x)).abs().sum(1).mean()
    d1 = (t.to_noise(x) - s1.to_noise(x)).abs().sum(1).mean()
    assert d1 < d0
    assert math.isclose(h["best_val"], evaluate_nll(s1, x[:128]), rel_tol=1e-5)
    assert "ilkd" in h and len(h["ilkd"]) == 60


def _tiny(**kw):
    from dgmkd.experiments import flow_kd as exp

    base = dict(datasets=("faithful",), archs=("maf", "glow"), seeds=(0,), teacher_steps=20, student_steps=10,
                eval_every=5, speed_repeats=2, speed_batch=50, images=False, progress=False)
    return exp, exp.Config(**{**base, **kw})


def _run(exp, cfg, out):
    from dgmkd.config import to_dict
    from dgmkd.harness import write_json

    write_json(out / "config.json", to_dict(cfg))
    exp.run(cfg, out)
    return (out / "report.md").read_text()


def test_experiment_tiny_run_and_report(tmp_path):
    exp, cfg = _tiny(skip=("glow:faithful:lkd",))
    text = _run(exp, cfg, tmp_path)
    assert "Table 1 analogue" in text and "Table 2 analogue" in text
    assert "| maf | skd |" in text and "Not run (configured `skip`): glow/faithful/lkd" in text
    (tmp_path / "report.md").unlink()
    assert exp.report(tmp_path) == text  # rebuilt from the run's CSV/JSON alone


def test_experiment_reads_uci_files(tmp_path):
    """``--set datasets=power --set data_root=DIR``: the UCI reader backs the tabular part."""
    from dgmkd.config import ConfigError, override

    (tmp_path / "data" / "power").mkdir(parents=True)
    np.save(tmp_path / "data" / "power" / "data.npy", np.random.default_rng(0).normal(size=(300, 8)) * 3 + 5)
    exp, cfg = _tiny(archs=("maf",), methods=("student", "ilkd"))
    cfg = override(cfg, ["datasets=power", f"data_root={tmp_path / 'data'}"])
    (tmp_path / "run").mkdir()
    text = _run(exp, cfg, tmp_path / "run")
    assert "| maf | ilkd |" in text and "power" in text
    rows = [r for r in (tmp_path / "run" / "tabular.csv").read_text().splitlines()[1:]]
    assert rows and all(r.startswith("power,maf,6,") for r in rows)  # MAF's POWER has 6 columns
    with pytest.raises(ConfigError, match="data_root"):
        override(exp.Config(), ["datasets=power"])
    with pytest.raises(ConfigError, match="datasets"):
        override(exp.Config(), ["datasets=cifar"])
    assert override(exp.Config(), ["datasets="]).datasets == ()  # the image part alone
    with pytest.raises(ConfigError, match="datasets"):  # ... but not nothing at all
        override(exp.Config(), ["datasets=", "images=false"])


def test_image_helpers():
    from dgmkd.data.digits import dequantize
    from dgmkd.experiments.flow_kd import LEVELS, bits_per_dim, interpolations, to_image

    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3).expand(2, 1, 8, 3).reshape(2, 1, 8, 3)
    d = dequantize(x, generator=torch.Generator().manual_seed(0)) - 0.5  # the experiment's centering
    assert float(d.min()) >= -0.5 and float(d.max()) < 0.5
    assert torch.equal(torch.floor((d + 0.5) * LEVELS), torch.round(x * 16))
    torch.manual_seed(0)
    g = Glow((1, 8, 8), levels=2, steps=1, hidden=8).eval()
    xs = torch.rand(6, 1, 8, 8) - 0.5
    bpd = bits_per_dim(g, xs)
    assert math.isclose(bpd, (evaluate_nll(g, xs) + 64 * math.log(17)) / (64 * math.log(2)), rel_tol=1e-6)
    im = interpolations(g, xs, 6, 0.7, torch.Generator().manual_seed(0))
    assert im.shape == (6, 1, 8, 8) and float(im.min()) >= 0 and float(im.max()) <= 1
    assert torch.equal(to_image(torch.tensor([-1.0, 0.0, 1.0])), torch.tensor([0.0, 0.5, 1.0]))


@pytest.mark.slow
def test_ilkd_beats_the_plain_maf_student_on_breast_cancer(tmp_path):
    """docs/flow_kd.md: on breast_cancer the ILKD MAF student beats the plain student of the same
    initialization (the clearest gain of the tabular table), and students evaluate densities faster."""
    from dgmkd.harness import read_csv

    exp, cfg = _tiny(datasets=("breast_cancer",), archs=("maf",), methods=("student", "ilkd"), seeds=(0, 1),
                     teacher_steps=1000, student_steps=500, eval_every=50, speed_repeats=10, speed_batch=1000)
    _run(exp, cfg, tmp_path)
    ll = {(r["model"], r["seed"]): r["test_ll"] for r in read_csv(tmp_path / "tabular.csv")}
    assert all(ll[("ilkd", s)] > ll[("student", s)] for s in cfg.seeds), ll
    sp = read_csv(tmp_path / "speed.csv")[0]
    assert sp["student_ms"] < sp["teacher_ms"], sp


def _moons(n, g):
    th = torch.rand(n, generator=g) * math.pi
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.stack([torch.cos(th), torch.sin(th)], 1)
    x = torch.where(upper[:, None], x, torch.stack([1 - torch.cos(th), 0.5 - torch.sin(th)], 1))
    return 2 * (x + 0.1 * torch.randn(n, 2, generator=g) - torch.tensor([0.5, 0.25]))


@pytest.fixture(scope="module")
def nsf_teacher():
    """A zuko NSF trained on two moons, its training data, held-out data and 2000 of its samples."""
    import zuko

    import dgmkd

    g = torch.Generator().manual_seed(0)
    x, xte = _moons(1500, g), _moons(1000, g)
    torch.manual_seed(0)
    teacher = zuko.flows.NSF(2, transforms=2, hidden_features=[24, 24])
    dgmkd.fit(lambda a, s: -teacher().log_prob(a[0]).mean(), teacher, dgmkd.train.minibatches(x, batch=256),
              steps=200, lr=5e-3, progress=False)
    with torch.no_grad():
        xt = teacher().sample((2000,))
    return teacher, x, xte, xt


@pytest.mark.parametrize("method, weights", [("lkd", None), ("ilkd", None), ("skd", None),
                                             ("ilkd", (0.0, 1.0, 0.0)), ("skd", (0.0, 0.0, 1.0))])
def test_distill_flow_zuko_nsf_into_maf_improves_on_the_untrained_student(nsf_teacher, method, weights):
    """dgmkd.distill_flow on any zuko flow: the MAF student's KL(teacher || student) (on teacher samples) and
    held-out NLL improve on the untrained student's — also by the distillation terms alone (l0 = 0)."""
    import zuko

    import dgmkd
    from dgmkd.methods.flow_kd import as_flow

    teacher, x, xte, xt = nsf_teacher

    def kl(s):
        with torch.no_grad():
            return float((teacher().log_prob(xt) - s().log_prob(xt)).mean())

    torch.manual_seed(1)
    student = zuko.flows.MAF(2, transforms=2, hidden_features=[16])
    kl0, nll0 = kl(student), evaluate_nll(as_flow(student), xte)
    h = dgmkd.distill_flow(teacher, student, x, method=method, weights=weights, steps=120, lr=3e-3, progress=False)
    kl1, nll1 = kl(student), evaluate_nll(as_flow(student), xte)
    assert kl1 < 0.7 * kl0 and nll1 < nll0 - 0.3, (kl0, kl1, nll0, nll1)
    assert len(h["loss"]) == 120 and ("skd" in h) == (method == "skd")


def test_distill_flow_bad_input_and_library_glow():
    import zuko

    import dgmkd

    with pytest.raises(ValueError, match="unknown method 'kd'"):
        dgmkd.distill_flow(maf(2), maf(2), torch.randn(8, 2), method="kd")
    with pytest.raises(ValueError, match="teacher has 3 dimensions, the student 2"):
        dgmkd.distill_flow(maf(3), maf(2), torch.randn(8, 3), steps=1, progress=False)
    with pytest.raises(TypeError, match="expected a zuko flow or a dgmkd flow"):
        dgmkd.distill_flow(torch.nn.Linear(2, 2), maf(2), torch.randn(8, 2))
    with pytest.raises(ValueError, match="not a standard normal"):
        f = zuko.flows.MAF(2, transforms=1)
        f.base = zuko.flows.UnconditionalDistribution(zuko.distributions.DiagNormal, torch.ones(2), torch.ones(2),
                                                      buffer=True)
        dgmkd.distill_flow(f, maf(2), torch.randn(8, 2))
    # the library's Glow (image-shaped data), ILKD over its matched steps
    t, s = _pair("glow", dim=4)
    x = torch.randn(256, 4, 1, 1)
    h = dgmkd.distill_flow(t, s, x, method="ilkd", weights=(0.0, 1.0, 0.0), steps=80, batch=64, lr=3e-3,
                           progress=False)
    assert np.mean(h["ilkd"][-10:]) < 0.7 * np.mean(h["ilkd"][:10])
