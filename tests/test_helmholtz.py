"""Helmholtz machine (Chen et al. 2023, Fig. 4c): exact enumeration against sampling and against a
brute-force sum over all 256 latent configurations; wake-sleep; coupling of binary latents."""

import copy
import itertools
import math

import pytest
import torch

import dgmkd
from dgmkd import losses
from dgmkd.models import HelmholtzMachine, HelmholtzRecognition
from dgmkd.models.helmholtz import LATENTS, wake_sleep_loss
from dgmkd.train import fit, minibatches


def _sharp(hidden=8, seed=0, gain=3.0):
    """A machine with large random weights, so that every latent matters."""
    torch.manual_seed(seed)
    m = HelmholtzMachine(hidden)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(gain)
    return m


def _brute_force_log_prob(m, y):
    """log sum_z p(y, z) over all 4**4 configurations, through log_joint (independent of log_prob)."""
    c = m.configs()
    n = y.shape[0]
    terms = []
    for idx in itertools.product(range(len(c)), repeat=4):
        z = {name: c[i].expand(n, -1) for name, i in zip(LATENTS, idx)}
        terms.append(m.log_joint(y, z))
    return torch.logsumexp(torch.stack(terms), 0)


def test_enumeration_matches_brute_force_joint_sum():
    m = _sharp(seed=1).double()
    y = torch.randn(7, 2, dtype=torch.float64) * 1.5
    with torch.no_grad():
        assert torch.allclose(m.log_prob(y), _brute_force_log_prob(m, y), atol=1e-9)


def test_enumerated_density_integrates_to_one_and_matches_samples():
    m = _sharp(seed=2)
    # quadrature on a fine grid
    g = torch.linspace(-12, 12, 481, dtype=torch.float64)
    h = float(g[1] - g[0])
    G1, G2 = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([G1.reshape(-1), G2.reshape(-1)], -1)
    md = m.double()
    with torch.no_grad():
        dens = md.log_prob(pts).exp().reshape(G1.shape)
    assert abs(float(dens.sum()) * h * h - 1.0) < 1e-3
    # sampling vs enumeration: probability of the four quadrants around the sample median and the
    # first two moments
    torch.manual_seed(0)
    with torch.no_grad():
        s = m(200_000).double()
    # thresholds on cell boundaries (grid points + h/2) near the sample medians, so the midpoint
    # rule counts whole cells
    med = s.median(0).values
    med = torch.stack([g[(g - m).abs().argmin()] + h / 2 for m in med])
    for a, b in itertools.product((True, False), repeat=2):
        emp = float((((s[:, 0] < med[0]) == a) & ((s[:, 1] < med[1]) == b)).double().mean())
        mask = ((G1 < med[0]) == a) & ((G2 < med[1]) == b)
        ex = float(dens[mask].sum()) * h * h
        assert abs(emp - ex) < 4 * math.sqrt(ex * (1 - ex) / len(s)) + 2e-3, (a, b, emp, ex)
    mean_ex = torch.stack([(dens * G1).sum(), (dens * G2).sum()]) * h * h
    assert torch.allclose(s.mean(0), mean_ex, atol=0.02)


def test_log_prob_rejects_bad_shapes_and_bad_sizes():
    m = HelmholtzMachine(4)
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        m.log_prob(torch.zeros(3))
    with pytest.raises(ValueError, match="positive"):
        HelmholtzMachine(0)
    with pytest.raises(ValueError, match="positive number of samples"):
        m(0)
    with pytest.raises(ValueError, match="wake-sleep algorithm"):
        wake_sleep_loss(m, HelmholtzRecognition(), torch.zeros(4, 2), "sleepwalk")


def test_sites_and_coupling_of_binary_latents():
    t, s = _sharp(seed=3), _sharp(hidden=2, seed=4)
    c = dgmkd.couple(t, s, 64)
    assert list(c.teacher_trace) == ["z4", "z3", "y2", "z2", "z1", "y1"]
    assert list(c.latents) == list(LATENTS) and list(c.targets) == ["y2", "y1"]
    for name, pair in c.latents.items():
        # one shared uniform per unit, and z = 1[u >= 1 - p] in both models
        assert pair.noise.shape == (64, 2)
        zs = c.student_trace[name]["value"]
        assert torch.equal(zs, (pair.noise >= 1 - pair.student.probs).float())
        assert torch.equal(pair.value, (pair.noise >= 1 - pair.teacher.probs).float())
    # a copy of the teacher reproduces its latents exactly and has zero losses
    c2 = dgmkd.couple(t, copy.deepcopy(t), 64)
    for name in LATENTS:
        assert torch.equal(c2.teacher_trace[name]["value"], c2.student_trace[name]["value"])
    assert float(losses.unified(c2, latent_weight=1.0).detach()) == 0.0
    assert float(losses.local(dgmkd.couple(t, copy.deepcopy(t), 64, mode="teacher_forced")).detach()) == 0.0


def test_only_the_latent_term_reaches_the_bernoulli_conditionals():
    # the inverse CDF is piecewise constant: the surrogate gives no gradient to p(z3 | z4), the
    # latent loss (Eq. 6) does
    t, s = _sharp(seed=5), HelmholtzMachine(2)
    c = dgmkd.couple(t, s, 256)
    g_sd = torch.autograd.grad(losses.surrogate(c), list(s.p_z3.parameters()) + [s.prior_logits], allow_unused=True)
    assert all(g is None or float(g.abs().max()) == 0.0 for g in g_sd)
    c = dgmkd.couple(t, s, 256)
    g_lat = torch.autograd.grad(losses.latent(c), list(s.p_z3.parameters()))
    assert max(float(g.abs().max()) for g in g_lat) > 1e-4


def test_wake_sleep_and_reweighted_wake_sleep_raise_the_likelihood():
    torch.manual_seed(0)
    data = torch.cat([torch.randn(100, 2) * 0.3 + torch.tensor([1.0, 1.0]),
                      torch.randn(100, 2) * 0.3 - torch.tensor([1.0, 1.0])])
    for alg in ("ws", "rws"):
        torch.manual_seed(1)
        m, r = HelmholtzMachine(8), HelmholtzRecognition(16)
        with torch.no_grad():
            before = float(m.log_prob(data).mean())
        fit(lambda a, _: wake_sleep_loss(m, r, a[0], alg, k=4), {"m": m, "r": r},
            minibatches(data, batch=64), 250, lr=1e-2, progress=False)
        with torch.no_grad():
            after = float(m.log_prob(data).mean())
        assert after > before + 0.5, (alg, before, after)
        # the bimodal data need the latents: a single Gaussian of std 0.5 cannot reach this
        assert after > -2.2, (alg, after)


def test_hm_experiment_writes_its_outputs(tmp_path):
    from dgmkd.config import ConfigError, override
    from dgmkd.experiments import get

    mod = get("hm-compress")
    cfg = override(mod.Config(), {**mod.QUICK, **mod.TEST, "progress": False})
    res = mod.run(cfg, tmp_path)
    for f in ("results.csv", "summary.csv", "report.md", "contours.png", "models.pt", "timing.json"):
        assert (tmp_path / f).exists(), f
    assert {r["method"] for r in res["rows"]} == {"teacher", "unified", "local", "scratch", "default"}
    assert all(math.isfinite(r["kl"]) and math.isfinite(r["test_ll"]) for r in res["rows"])
    for bad, key in (({"algorithm": "foo"}, "algorithm"), ({"seeds": ()}, "seeds"), ({"student_hidden": (2, 0)},
                                                                                      "student_hidden")):
        with pytest.raises(ConfigError, match=key):
            override(mod.Config(), bad)


@pytest.mark.slow
def test_hm_finding_local_below_unified_at_both_widths(tmp_path):
    """docs/hm_vrnn.md: local distillation ends with a smaller exact KL to the teacher than unified at
    both student widths (the surrogate never reaches the binary units)."""
    from dgmkd.config import override
    from dgmkd.experiments import get
    from dgmkd.harness import read_csv

    mod = get("hm-compress")
    cfg = override(mod.Config(), {"seeds": (0, 1), "teacher_steps": 1500, "scratch_steps": 1500,
                                  "distill_steps": 1500, "kl_samples": 20000, "grid": 20, "progress": False})
    mod.run(cfg, tmp_path)
    kl = {(r["hidden"], r["method"]): r["kl_mean"] for r in read_csv(tmp_path / "summary.csv")
          if r["method"] != "teacher"}
    for width in (2, 1):
        assert kl[width, "local"] < kl[width, "unified"], kl


def test_latent_weight_is_immaterial_under_adam_for_binary_latents():
    # Finding, not a requirement of the paper: with binary latents the surrogate reaches only the
    # target networks and the latent loss only the Bernoulli networks (disjoint parameters), and
    # Adam is invariant to a constant scale of a parameter's gradient — so lambda in Eq. (7) does
    # not change the trained student (up to Adam's epsilon).
    t = _sharp(seed=7)
    students = []
    for lam in (0.1, 10.0):
        torch.manual_seed(0)
        s = HelmholtzMachine(2)
        dgmkd.distill(t, s, 64, "unified", 25, lr=1e-2, latent_weight=lam, seed=0, progress=False)
        students.append(s)
    for a, b in zip(students[0].parameters(), students[1].parameters()):
        assert torch.allclose(a, b, atol=1e-4)
