"""VRNN (Chung et al. 2015) with dgmkd sites: coupling semantics, the IWAE bound against quadrature,
masking, and a smoke run of the experiment."""

import copy
import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal

import dgmkd
from dgmkd import losses
from dgmkd.models import VRNN


def test_sites_shapes_and_errors():
    torch.manual_seed(0)
    m = VRNN(x_dim=2, hidden=8, z_dim=3, seq_len=5, pen=True)
    with dgmkd.handlers.trace() as tr:
        x = m(4)
    assert x.shape == (4, 5, 3)
    assert list(tr.sites)[:3] == ["z0", "pen0", "x0"] and len(tr.sites) == 15
    assert set(x[..., 0].unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="positive"):
        m(0)
    with pytest.raises(ValueError, match=r"\(n, T, 3\)"):
        m.log_weights(torch.zeros(4, 5, 2))
    with pytest.raises(ValueError, match="mask"):
        m.log_weights(torch.zeros(4, 5, 3), mask=torch.ones(4, 4))


def test_unified_coupling_teacher_forces_targets_and_shares_z_noise():
    torch.manual_seed(0)
    t, s = VRNN(hidden=16, z_dim=2, seq_len=6), VRNN(hidden=4, z_dim=2, seq_len=6)
    c = dgmkd.couple(t, s, 32)
    for step in range(6):
        # targets: the student sees the teacher's values
        assert torch.equal(c.student_trace[f"x{step}"]["value"], c.targets[f"x{step}"].value)
        # latents: the student's own prior applied to the teacher's noise
        pz = c.latents[f"z{step}"]
        zs = c.student_trace[f"z{step}"]["value"]
        ps = pz.student.base_dist
        assert torch.allclose(zs, ps.loc + ps.scale * pz.noise)
        assert not torch.allclose(zs, pz.value)
    # local distillation substitutes the teacher's z as well
    cl = dgmkd.couple(t, s, 32, mode="teacher_forced")
    assert all(torch.equal(cl.student_trace[f"z{k}"]["value"], cl.latents[f"z{k}"].value) for k in range(6))
    # a copy of the teacher has zero unified and local losses
    c2 = dgmkd.couple(t, copy.deepcopy(t), 32)
    assert float(losses.unified(c2, latent_weight=1.0).detach()) == 0.0
    assert float(losses.local(dgmkd.couple(t, copy.deepcopy(t), 32, mode="teacher_forced")).detach()) == 0.0


@pytest.mark.parametrize("pen", [False, True])
def test_iwae_bound_converges_to_the_quadrature_likelihood(pen):
    # T = 1, one latent unit: log p(x) = log ∫ p(z|h0) p(x|z, h0) dz by quadrature
    torch.manual_seed(3)
    m = VRNN(x_dim=1, hidden=8, z_dim=1, seq_len=1, pen=pen).double()
    x = m(3).detach()
    h0 = torch.zeros(1, m.hidden, dtype=torch.float64)
    zg = torch.linspace(-12, 12, 20001, dtype=torch.float64).unsqueeze(-1)
    with torch.no_grad():
        loc, sc = m.prior(h0)
        lpz = Normal(loc, sc).log_prob(zg).squeeze(-1)
        dec = torch.cat([m.phi_z(zg), h0.expand(len(zg), -1)], -1)
        mu, sd = m.emission(dec)
        exact = []
        for xi in x[:, 0]:
            lpx = Normal(mu, sd).log_prob(xi[-1:]).sum(-1)
            if pen:
                lpx = lpx + Bernoulli(logits=m.pen_head(dec)).log_prob(xi[:1]).sum(-1)
            exact.append(torch.logsumexp(lpz + lpx, 0) + math.log(float(zg[1] - zg[0])))
        exact = torch.stack(exact)
        torch.manual_seed(0)
        iwae = -m.iwae_nll(x, k=20000, batch=1)
        elbo = m.log_weights(x, k=2000).mean(0)
    assert torch.allclose(iwae, exact, atol=0.02), (iwae, exact)
    assert torch.all(elbo <= exact + 1e-6)


def test_mask_ignores_padded_steps():
    torch.manual_seed(0)
    m = VRNN(hidden=8, z_dim=2, seq_len=7)
    x = m(5).detach()
    mask = torch.ones(5, 7)
    mask[:, 4:] = 0
    torch.manual_seed(1)
    a = m.log_weights(x, 3, mask)
    torch.manual_seed(1)
    b = m.log_weights(x[:, :4], 3)
    assert torch.allclose(a, b, atol=1e-5)


def test_vrnn_experiment_smoke(tmp_path):
    from dgmkd.config import ConfigError, override
    from dgmkd.experiments import get

    mod = get("vrnn-compress")
    res = mod.run(override(mod.Config(), {**mod.QUICK, **mod.TEST, "progress": False}), tmp_path)
    for f in ("results.csv", "summary.csv", "report.md", "samples.png", "teacher.pt", "models.pt", "meta.json"):
        assert (tmp_path / f).exists(), f
    assert {r["method"] for r in res["rows"]} == {"teacher", "unified", "local", "scratch", "default"}
    assert all(math.isfinite(r["fd_to_teacher"]) and math.isfinite(r["iwae_nll"]) for r in res["rows"])
    with pytest.raises(ConfigError, match="data_root"):
        override(mod.Config(), {"dataset": "iam"})
    with pytest.raises(ConfigError, match="eval_samples"):
        override(mod.Config(), {"eval_samples": 5})


@pytest.mark.slow
def test_vrnn_finding_distilled_students_closer_to_the_teacher_than_scratch(tmp_path):
    """docs/hm_vrnn.md: at hidden 16 both data-free students end closer to the teacher in FD than a
    student trained on the data for as many steps."""
    from dgmkd.config import override
    from dgmkd.experiments import get
    from dgmkd.harness import read_csv

    mod = get("vrnn-compress")
    cfg = override(mod.Config(), {"seeds": (0,), "student_hidden": (16,), "num_samples": 2000, "teacher_steps": 800,
                                  "classifier_steps": 300, "eval_samples": 1000, "iwae_test": 100, "iwae_k": 5,
                                  "encoder_steps": 20, "progress": False})
    mod.run(cfg, tmp_path)
    fd = {r["method"]: r["fd_to_teacher_mean"] for r in read_csv(tmp_path / "summary.csv")}
    assert max(fd["unified"], fd["local"]) < fd["scratch"], fd
