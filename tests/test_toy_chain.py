"""The error-accumulation toy: chain models, the exact KL wrappers and the `toy-chain` experiment."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

import dgmkd
from dgmkd import cli
from dgmkd.config import ConfigError
from dgmkd import harness
from dgmkd.experiments import toy_chain as tc
from dgmkd.metrics.grid_kl import binomial_chain_kl, binomial_chain_pmfs, gaussian_chain_kl, sample_layers
from dgmkd.models import BinomialStudentChain, BinomialTeacherChain, GaussianStudentChain, GaussianTeacherChain
from dgmkd.models.toy_chain import power_map


def test_gaussian_teacher_is_the_papers_chain_with_variance_0_01():
    t = GaussianTeacherChain(layers=3)
    z = torch.linspace(-2, 2, 9)[:, None]
    d = t.conditional(0, z)
    assert torch.allclose(d.loc, torch.sign(z) * z.abs() ** 1.1)
    assert torch.allclose(d.scale, torch.tensor(0.1))  # N(mu, 0.01 I) read as a variance
    with dgmkd.handlers.trace() as tr:
        y = t(500)
    assert list(tr.sites) == ["z1", "z2", "z3", "y"]
    assert [m["kind"] for m in tr.sites.values()] == ["latent"] * 3 + ["target"]
    assert y.shape == (500, 1) and float(tr.sites["z1"]["value"].abs().max()) <= 1.0
    # power_map pushes |z| > 1 outward and |z| < 1 inward
    assert float(power_map(torch.tensor(2.0))) > 2 and 0 < float(power_map(torch.tensor(0.5))) < 0.5


def test_binomial_teacher_is_a_martingale_on_integers():
    t = BinomialTeacherChain(layers=4, total=100)
    torch.manual_seed(0)
    y = t(4000)
    assert torch.equal(y, y.round()) and 0 <= float(y.min()) and float(y.max()) <= 100
    pmfs = binomial_chain_pmfs(t)
    k = np.arange(101)
    assert len(pmfs) == 5
    for p in pmfs:  # exact: mass 1, mean N/2 at every layer
        assert p.sum() == pytest.approx(1.0, abs=1e-9)
        assert (p * k).sum() == pytest.approx(50.0, abs=1e-3)
    assert float(y.mean()) == pytest.approx(50.0, abs=2.0)


def test_bad_model_arguments_raise():
    with pytest.raises(ValueError, match="layers"):
        GaussianTeacherChain(layers=0)
    with pytest.raises(ValueError, match="hidden"):
        GaussianStudentChain(layers=2, hidden=-1)
    with pytest.raises(ValueError, match="total"):
        BinomialTeacherChain(layers=2, total=0)


def test_binomial_student_with_zero_residual_is_the_teacher():
    t = BinomialTeacherChain(layers=3, total=200)
    s = BinomialStudentChain(layers=3, hidden=0, total=200)
    with torch.no_grad():
        for lin in s.res:
            lin.weight.zero_()
            lin.bias.zero_()
    teacher_pmf = binomial_chain_pmfs(t)[-1]
    ev = binomial_chain_kl(teacher_pmf, s)
    assert 0 <= ev["kl_grid"] < 1e-3  # only the logit clip at z = 0 and z = N differs
    assert ev["mass_student"] == pytest.approx(1.0, abs=1e-9)
    # the same student with a shifted residual is far from the teacher
    with torch.no_grad():
        for lin in s.res:
            lin.bias.fill_(0.2)
    assert binomial_chain_kl(teacher_pmf, s)["kl_grid"] > 0.02


def _reference_kl_one_layer(sig_t, sig_s):
    """KL of y = mu(z1) + sig * eps, z1 ~ U[-1,1], by dense quadrature (independent of grid_kl)."""
    z = np.linspace(-1, 1, 4001)
    mu = np.sign(z) * np.abs(z) ** 1.1
    y = np.linspace(-1.8, 1.8, 3001)

    def dens(sig):
        f = norm.pdf((y[:, None] - mu[None, :]) / sig) / sig * 0.5
        return np.trapezoid(f, z, axis=1)

    pt, ps = dens(sig_t), dens(sig_s)
    return float(np.trapezoid(pt * np.log(pt / ps), y))


def _chain_kl(t, s, n=3000):
    torch.manual_seed(0)
    return gaussian_chain_kl(t, s, sample_layers(t, n) + sample_layers(s, n))


def test_gaussian_grid_kl_matches_quadrature_and_is_zero_for_identical_chains():
    t = GaussianTeacherChain(layers=1, noise_var=0.01)
    s = GaussianTeacherChain(layers=1, noise_var=0.02)
    ev = _chain_kl(t, s)
    assert ev["kl_grid"] == pytest.approx(_reference_kl_one_layer(0.1, math.sqrt(0.02)), rel=5e-3)
    assert ev["mass_teacher"] == pytest.approx(1.0, abs=1e-6) and ev["mass_student"] == pytest.approx(1.0, abs=1e-6)
    same = _chain_kl(GaussianTeacherChain(layers=6), GaussianTeacherChain(layers=6))
    assert abs(same["kl_grid"]) < 1e-12 and same["mass_teacher"] > 0.999999
    # the teacher's marginal spreads with depth: the grid chosen from samples widens
    assert same["grid_hi"] - same["grid_lo"] > ev["grid_hi"] - ev["grid_lo"]


def test_dre_tracks_the_exact_kl_on_chains():
    cfg = tc.Config(eval_samples=3000)
    t = GaussianTeacherChain(layers=4)
    s = GaussianTeacherChain(layers=4, noise_var=0.09)
    ev = tc.evaluate("gaussian", t, s, cfg, seed=0)
    assert ev["kl_grid"] > 0.05
    assert abs(ev["kl_dre"] - ev["kl_grid"]) < 0.3 * ev["kl_grid"], ev


def test_distillation_reduces_the_exact_kl():
    cfg = tc.Config(eval_samples=500, dre=False, lr=1e-2)
    t = GaussianTeacherChain(layers=3)
    s = tc.make_student("gaussian", 3, hidden=8, seed=0, cfg=cfg)
    before = _chain_kl(t, s, 2000)["kl_grid"]
    for method, lam in (("local", None), ("unified", 0.1)):
        r = tc.train_and_evaluate("gaussian", 3, method, lam, 8, 150, 0, cfg)
        assert r["kl_grid"] < 0.5 * before, (method, r["kl_grid"], before)


def test_config_errors_are_clear():
    with pytest.raises(ConfigError, match="variant='poisson'"):
        tc.Config(variant="poisson").validate()
    with pytest.raises(ConfigError, match="layers"):
        tc.Config(layers=(0, 2)).validate()
    with pytest.raises(ConfigError, match="methods"):
        tc.Config(methods=("marginal",)).validate()
    with pytest.raises(ConfigError, match="lambdas"):
        tc.Config(lambdas=(-1.0,)).validate()
    with pytest.raises(ConfigError, match="seeds"):
        tc.Config(seeds=()).validate()
    assert cli.main(["run", "toy-chain", "--set", "variant=poisson", "--out", "/nonexistent/x"]) == 2
    assert cli.main(["run", "toy-chain", "--set", "hidden=-1", "--out", "/nonexistent/x"]) == 2
    assert cli.main(["run", "toy-chain", "--set", "regime_steps=0", "--out", "/nonexistent/x"]) == 2
    assert cli.main(["run", "toy-chain", "--set", "seeds=a", "--out", "/nonexistent/x"]) == 2


def test_tiny_run_writes_csv_plots_and_report(tmp_path, capsys):
    cfg = tc.Config(layers=(1, 2), seeds=(3,), steps=15, binomial_steps=5, eval_samples=200, hidden=4,
                    regime_layers=2, regime_hidden=(0,), regime_steps=(5,), regime_seeds=(0, 1))
    harness.write_json(tmp_path / "config.json", {"experiment": "toy-chain", **tc.to_dict(cfg)})
    res = tc.run(cfg, tmp_path)
    n_methods = 4  # local, unified(0), unified(0.1), default
    expected = 2 * 2 * n_methods * 1 + n_methods * 2  # variants x L x methods x seeds + regimes x seeds
    rows = harness.read_csv(tmp_path / "results.csv")
    assert len(rows) == expected == len(res["rows"])
    assert {r["seed"] for r in rows if r["sweep"] == "depth"} == {3}
    assert all(math.isfinite(r["kl_grid"]) and r["kl_grid"] >= -1e-9 for r in rows)
    for name in ("summary.csv", "report.md", "kl_vs_layers_gaussian.png", "kl_vs_layers_binomial.png", "regimes.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    report = (tmp_path / "report.md").read_text()
    assert "## gaussian" in report and "## binomial" in report and "DRE against the exact grid KL" in report
    assert harness.SPREAD in report and "is below local at " in report
    assert str(tmp_path) in capsys.readouterr().out
    # the report is rebuilt from the run's files alone (no retraining) and is then identical
    (tmp_path / "report.md").unlink()
    assert tc.report(tmp_path) == report == (tmp_path / "report.md").read_text()
    # the same seed gives the same student, whatever else the run contains
    again = tc.train_and_evaluate("gaussian", 2, "local", None, 4, 15, 3, cfg)
    first = next(r for r in rows if r["sweep"] == "depth" and r["variant"] == "gaussian" and r["layers"] == 2
                 and r["method"] == "local")
    assert again["kl_grid"] == pytest.approx(first["kl_grid"], rel=1e-12)


def test_cli_lists_toy_chain(capsys):
    assert cli.main(["list"]) == 0
    assert "toy-chain" in capsys.readouterr().out


def test_binomial_unified_is_invariant_to_positive_lambda_under_adam():
    """With discrete latents the surrogate loss reaches only the target's conditional (the inverse
    CDF is piecewise constant) and each latent conditional gets gradient only from its own
    lambda-weighted term, so Adam (invariant to a constant gradient scale) follows the same path
    for every lambda > 0; lambda = 0 leaves the latent conditionals untrained."""
    t = BinomialTeacherChain(layers=3, total=100)
    params = {}
    for lam in (0.0, 0.1, 1.0):
        torch.manual_seed(0)
        s = BinomialStudentChain(layers=3, hidden=4, total=100)
        init = [p.detach().clone() for p in s.parameters()]
        dgmkd.distill(t, s, inputs=32, method="unified", steps=10, lr=1e-2, latent_weight=lam, seed=0, progress=False)
        params[lam] = [p.detach().clone() for p in s.parameters()]
        if lam == 0.0:  # res[0], res[1] (4 tensors each) feed latents z2, z3: untouched; res[2] feeds y
            assert all(torch.equal(a, b) for a, b in zip(params[lam][:8], init[:8]))
            assert not all(torch.equal(a, b) for a, b in zip(params[lam][8:], init[8:]))
    for a, b, c in zip(params[0.1], params[1.0], params[0.0]):
        assert torch.allclose(a, b, atol=1e-5)
    assert not all(torch.allclose(a, c) for a, c in zip(params[0.1], params[0.0]))


@pytest.mark.slow
def test_documented_finding_unified_wins_on_narrow_gaussian_local_wins_on_binomial(tmp_path):
    """docs/toy_chain.md: at L = 8 with narrow (width-4) residual students the unified surrogate loss
    (lambda = 0) ends far below local distillation on the Gaussian chain, while on the binomial chain,
    whose student family contains the teacher, local distillation is the better method."""
    cfg = tc.Config(layers=(8,), lambdas=(0.0,), hidden=4, steps=600, binomial_steps=150, seeds=(0, 1), dre=False,
                    regimes=False)
    harness.write_json(tmp_path / "config.json", {"experiment": "toy-chain", **tc.to_dict(cfg)})
    tc.run(cfg, tmp_path)
    kl = {(s["variant"], s["method"]): s["kl_grid_mean"] for s in harness.read_csv(tmp_path / "summary.csv")}
    assert kl["gaussian", "unified(lambda=0)"] < kl["gaussian", "local"], kl
    assert kl["binomial", "local"] < kl["binomial", "unified(lambda=0)"], kl
