"""The ladder VAE (dgmkd.models.hvae) and the hvae-compress experiment's plumbing."""

import copy
import math

import pytest
import torch
from torch.distributions import Normal

import dgmkd
from dgmkd import losses
from dgmkd.models.hvae import LadderVAE, iw_nll, train_elbo

SITES = ["z5", "z4", "z3", "z2", "z1"]

pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.mark.parametrize("size,channels", [(8, 1), (32, 3), (64, 3)])
def test_shapes_sites_and_sampling(size, channels):
    torch.manual_seed(0)
    m = LadderVAE(image_size=size, channels=channels, width=4)
    assert m.sample(3).shape == (3, channels, size, size)
    with dgmkd.handlers.trace() as tr:
        x = m(2)
    assert list(tr.sites) == SITES + ["x"] and x.shape == (2, channels, size, size)
    with dgmkd.handlers.trace() as tr:
        m.inference()(torch.rand(2, channels, size, size))
    assert list(tr.sites) == SITES + ["x_rec"]
    assert [tr.sites[s]["kind"] for s in SITES] == ["latent"] * 5
    assert m.num_parameters() == m.num_parameters("generative") + m.num_parameters("encoder")


def test_bad_arguments_are_reported():
    with pytest.raises(ValueError, match="image_size"):
        LadderVAE(image_size=28)
    with pytest.raises(ValueError, match="likelihood"):
        LadderVAE(likelihood="poisson")
    m = LadderVAE(width=4)
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        m.elbo(torch.rand(5, 64))
    with pytest.raises(ValueError, match="batch size"):
        m(0)
    with pytest.raises(ValueError, match="k must be"):
        iw_nll(m, torch.rand(2, 1, 8, 8), k=0)


def test_precision_weighted_merge_is_the_normalized_product_of_gaussians():
    g = torch.Generator().manual_seed(0)
    r = lambda: torch.randn(6, generator=g, dtype=torch.float64)
    u = lambda: torch.rand(6, generator=g, dtype=torch.float64) + 0.2
    mu_hat, sd_hat = r(), u()
    prior = Normal(r(), u())
    q = LadderVAE.merge(mu_hat, sd_hat, prior)
    # log q(z) - log N(z; mu_hat, sd_hat) - log p(z) must not depend on z
    zs = torch.randn(10, 6, generator=g, dtype=torch.float64) * 3
    diff = q.log_prob(zs) - Normal(mu_hat, sd_hat).log_prob(zs) - prior.log_prob(zs)
    assert torch.allclose(diff, diff[0].expand_as(diff), atol=1e-8)
    # a very confident bottom-up estimate dominates
    q2 = LadderVAE.merge(mu_hat, torch.full_like(sd_hat, 1e-4), prior)
    assert torch.allclose(q2.loc, mu_hat, atol=1e-4)


def test_importance_weighted_bound_is_tighter_than_the_elbo():
    torch.manual_seed(0)
    m = LadderVAE(width=4).eval()
    x = torch.rand(8, 1, 8, 8)
    torch.manual_seed(1)
    elbo = torch.stack([m.elbo(x)[0] for _ in range(50)]).mean(0).detach()  # E_q[log p(x,z) - log q]
    torch.manual_seed(2)
    nll_100 = iw_nll(m, x, k=100)
    torch.manual_seed(2)
    nll_1 = torch.stack([iw_nll(m, x, k=1) for _ in range(50)]).mean(0)
    assert (nll_100 <= -elbo + 1e-3).all()
    # k = 1 is the ELBO (Monte Carlo, two different estimators of the same mean)
    assert torch.allclose(nll_1, -elbo, rtol=0.05, atol=2.0)


def test_log_weights_match_a_direct_computation():
    torch.manual_seed(0)
    m = LadderVAE(width=4).eval()
    x = torch.rand(3, 1, 8, 8)
    torch.manual_seed(5)
    lw = m.log_weights(x, k=1)[0]
    torch.manual_seed(5)
    bu = m.bottom_up(x)
    layers, out = m._top_down(3, x, lambda n, d: d.sample(), bu)
    want = Normal(torch.sigmoid(out), 0.1).log_prob(x).flatten(1).sum(-1)
    for z, q, p in layers:
        want = want + p.log_prob(z).sum(-1) - q.log_prob(z).sum(-1)
    assert torch.allclose(lw, want, atol=1e-4)


def test_copy_of_teacher_gives_zero_losses_and_student_couples():
    torch.manual_seed(0)
    t = LadderVAE(width=8)
    c = dgmkd.couple(t, copy.deepcopy(t), 16)
    assert float(losses.unified(c, latent_divergence="w2").detach()) == 0.0
    assert float(losses.local(dgmkd.couple(t, copy.deepcopy(t), 16, mode="teacher_forced"))) == 0.0
    x = torch.rand(4, 1, 8, 8)
    ci = dgmkd.couple(t.inference(), copy.deepcopy(t).inference(), x)
    assert float(losses.unified(ci, latent_weight=1.0)) == 0.0
    s = LadderVAE(width=3)
    assert float(losses.unified(dgmkd.couple(t, s, 16))) > 0
    # the shared noise gives the student the same top latent as the teacher
    c = dgmkd.couple(t, s, 16)
    assert torch.equal(c.teacher_trace["z5"]["value"], c.student_trace["z5"]["value"])
    with pytest.raises(dgmkd.SiteMismatchError):
        dgmkd.couple(t, LadderVAE(width=3, latent_dims=(16, 12, 8, 6, 5)), 4)


def test_bernoulli_likelihood():
    torch.manual_seed(0)
    m = LadderVAE(width=4, likelihood="bernoulli")
    x = (torch.rand(4, 1, 8, 8) > 0.5).float()
    assert torch.isfinite(iw_nll(m, x, k=3)).all()
    s = m.sample(5)
    assert ((s > 0) & (s < 1)).all()  # Bernoulli means


def test_train_elbo_and_distill_reduce_their_losses():
    from dgmkd.data import digits_split

    x = digits_split("train")[0][:256]
    torch.manual_seed(0)
    t = LadderVAE(width=4)
    h = train_elbo(t, x, 40, batch=32, lr=3e-3, warmup=10, progress=False)
    assert sum(h["rec"][-10:]) / 10 > sum(h["rec"][:10]) / 10
    t.eval().requires_grad_(False)
    s = LadderVAE(width=2)
    h = dgmkd.distill(t, s, inputs=32, steps=30, lr=3e-3, latent_divergence="w2", progress=False)
    assert sum(h["loss"][-5:]) < sum(h["loss"][:5])


def test_encoder_distillation_trains_only_the_encoder():
    from dgmkd.experiments import hvae_compress as H

    torch.manual_seed(0)
    t = LadderVAE(width=6).eval().requires_grad_(False)
    s = LadderVAE(width=3)
    gen0 = [p.clone() for p in s.generative_parameters()]
    enc0 = [p.clone() for p in s.encoder_parameters()]
    cfg = H.Config(encoder_steps=5, batch=16)
    h = H._distill_encoder(t, s, "unified", cfg, seed=0, progress=False)
    assert len(h["loss"]) == 5
    assert all(torch.equal(a, b) for a, b in zip(gen0, s.generative_parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(enc0, s.encoder_parameters()))
    assert all(p.requires_grad for p in s.parameters())  # restored


def test_student_widths_hit_the_parameter_ratios():
    from dgmkd.experiments import hvae_compress as H

    cfg = H.Config(teacher_width=64, ratios=(15, 50, 150))
    n_t = LadderVAE(width=64).num_parameters()
    for w, r in H.student_widths(cfg, 8, 1):
        ratio = n_t / LadderVAE(width=w).num_parameters()
        assert abs(math.log(ratio / r)) < math.log(1.3), (w, r, ratio)


def test_experiment_end_to_end_tiny(tmp_path, monkeypatch):
    from dgmkd.experiments import hvae_compress as H
    from dgmkd.metrics import FeatureCNN

    torch.manual_seed(0)
    monkeypatch.setattr(H, "_feature_net", lambda cfg, xtr, ytr, out: (FeatureCNN(1, 8, 10, 8).eval(), "random-CNN"))
    cfg = H.Config(teacher_width=8, ratios=(4,), teacher_steps=6, warmup=2, student_steps=4, encoder_steps=2,
                   methods=("unified", "local", "scratch"), seeds=(0, 1), eval_samples=60, nll_k=2, batch=16,
                   progress=False)
    res = H.run(cfg, tmp_path)
    assert len(res["rows"]) == 1 + 2 * 3
    report = (tmp_path / "report.md").read_text()
    assert "| teacher | teacher |" in report and "± " in report and "NLL" in report
    assert (tmp_path / "samples_teacher.png").is_file() and (tmp_path / "samples_4_unified.png").is_file()
    assert (tmp_path / "results.csv").is_file()
    with pytest.raises(ValueError, match="unknown methods"):
        H.run(H.Config(methods=("magic",)), tmp_path)


def test_goal_check_logic():
    from dgmkd.experiments.hvae_compress import COLS, goal_check

    def row(m, v):
        return {"size": "1/15", "method": m, **{k: v for k, _ in COLS}}

    lines, ok = goal_check([row("unified", 1.0), row("local", 2.0), row("scratch", 3.0)])
    assert ok and "MET" in lines[0]
    bad = row("unified", 1.0)
    bad["fd_t"] = 2.5
    lines, ok = goal_check([bad, row("local", 2.0), row("scratch", 3.0)])
    assert not ok and "NOT MET" in lines[0]


def test_experiment_runs_on_svhn_files_at_32x32(tmp_path, monkeypatch):
    """The same experiment on a user's SVHN .mat files (tiny fixtures written here), 3-channel 32x32."""
    import numpy as np
    import scipy.io

    from dgmkd.experiments import hvae_compress as H
    from dgmkd.metrics import FeatureCNN

    rng = np.random.default_rng(0)
    for name, n in (("train_32x32.mat", 40), ("test_32x32.mat", 20)):
        scipy.io.savemat(str(tmp_path / name), {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                                                "y": (np.arange(n) % 10 + 1).reshape(-1, 1)})
    seen = {}

    def feature_net(cfg, xtr, ytr, out):
        seen["shape"] = tuple(xtr.shape)
        return FeatureCNN(3, 32, 10, 8).eval(), "random-CNN"

    monkeypatch.setattr(H, "_feature_net", feature_net)
    cfg = H.Config(dataset="svhn", data_root=str(tmp_path), teacher_width=4, ratios=(2,), teacher_steps=2, warmup=1,
                   student_steps=2, encoder_steps=1, methods=("unified", "scratch"), seeds=(0,), eval_samples=20,
                   nll_k=2, batch=8, grid=2, progress=False)
    out = tmp_path / "run"
    out.mkdir()
    res = H.run(cfg, out)
    assert seen["shape"] == (40, 3, 32, 32)
    assert len(res["rows"]) == 3 and all(math.isfinite(r["fd"]) for r in res["rows"])
    with pytest.raises(ValueError, match="data_root"):
        H.run(H.Config(dataset="cifar10"), out)
