"""Latent maps: a narrower student shares the teacher's noise through a fixed map; Prop. 3.1 still
holds (exact on a linear Gaussian model); the latent loss compares the teacher's restricted
conditional; bad maps are errors naming the site."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal

import dgmkd
from dgmkd import losses, maps
from dgmkd.handlers import SiteMismatchError


def linear(width, a, sigma, prior_scale=None):
    """z ~ N(0, s^2 I_width); y | z ~ N(a . z, sigma^2)."""
    a = torch.as_tensor(a, dtype=torch.float64)
    s = torch.ones(width, dtype=torch.float64) if prior_scale is None else torch.as_tensor(prior_scale, dtype=torch.float64)

    def run(n):
        z = dgmkd.latent("z", Independent(Normal(torch.zeros(n, width, dtype=torch.float64), s), 1))
        return dgmkd.target("y", Normal(z @ a, sigma))

    return run


def kl_normal(m1, v1, m2, v2):
    return 0.5 * (v1 / v2 + (m1 - m2) ** 2 / v2 - 1 + math.log(v2 / v1))


@pytest.mark.parametrize("which", ["first", "orthonormal"])
def test_prop_3_1_with_a_narrower_student_exact(which):
    """Teacher z in R^3, student z in R^1 from m(eps): p(y|eps) are Gaussians, so the surrogate loss
    E KL(N(a.eps, st^2) || N(b q.eps, ss^2)) = kl at zero means + |a - b q|^2 / (2 ss^2) exactly,
    and the marginal KL between N(0, |a|^2 + st^2) and N(0, b^2 + ss^2) lies below it."""
    a, st, b, ss = [1.0, -0.7, 0.4], 0.5, 0.8, 0.9
    m = maps.first(1) if which == "first" else maps.orthonormal(1, seed=3)
    q = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64) if which == "first" else m.matrix(3, torch.float64)[:, 0]
    gap = float(((torch.tensor(a, dtype=torch.float64) - b * q) ** 2).sum())
    exact_sur = kl_normal(0, st ** 2, 0, ss ** 2) + gap / (2 * ss ** 2)
    marginal = kl_normal(0, sum(x * x for x in a) + st ** 2, 0, b * b + ss ** 2)
    assert marginal < exact_sur
    torch.manual_seed(0)
    t, s = linear(3, a, st), linear(1, [b], ss)
    est = np.array([float(losses.surrogate(dgmkd.couple(t, s, 4000, latent_maps={"z": m}))) for _ in range(20)])
    se = est.std(ddof=1) / np.sqrt(len(est))
    assert abs(est.mean() - exact_sur) < 4 * se


def test_first_shares_the_leading_noise_and_restricts_the_teacher():
    t = linear(4, [1.0, 2.0, 3.0, 4.0], 0.5, prior_scale=[1.0, 2.0, 3.0, 4.0])
    s = linear(2, [1.0, 2.0], 0.5, prior_scale=[1.5, 2.0])
    c = dgmkd.couple(t, s, 6, latent_maps={"z": maps.first(2)})
    eps = c.teacher_trace["z"]["noise"]
    assert eps.shape == (6, 4)
    assert torch.equal(c.student_trace["z"]["noise"], eps[:, :2])
    assert torch.allclose(c.student_trace["z"]["value"], eps[:, :2] * torch.tensor([1.5, 2.0], dtype=torch.float64))
    pair = c.latents["z"]
    assert pair.teacher.event_shape == (2,) and torch.equal(pair.teacher.base_dist.scale.expand(6, 2)[0],
                                                            torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert torch.equal(pair.value, c.teacher_trace["z"]["value"][:, :2])
    # latent loss: KL(N(0,1)||N(0,1.5^2)) + KL(N(0,2^2)||N(0,2^2)) per sample
    assert float(losses.latent(c)) == pytest.approx(kl_normal(0, 1.0, 0, 2.25), rel=1e-9)
    assert list(c.sites()) == ["z", "y"]


def test_first_on_uniform_noise_and_on_a_channel_dimension():
    def hm(width):
        def run(n):
            b = dgmkd.latent("b", Independent(Bernoulli(logits=torch.linspace(-2, 2, width).expand(n, width)), 1))
            return dgmkd.target("y", Normal(b.sum(-1), 1.0))
        return run

    c = dgmkd.couple(hm(5), hm(3), 8, latent_maps={"b": maps.first(3)})
    assert torch.equal(c.student_trace["b"]["noise"], c.teacher_trace["b"]["noise"][:, :3])
    assert torch.allclose(c.latents["b"].teacher.base_dist.logits[0], torch.linspace(-2, 2, 5)[:3])

    def img(ch):
        def run(n):
            z = dgmkd.latent("z", Independent(Normal(torch.zeros(n, ch, 2, 2), 1.0), 3))
            return dgmkd.target("y", Normal(z.sum((1, 2, 3)), 1.0))
        return run

    c = dgmkd.couple(img(4), img(1), 3, latent_maps={"z": maps.first(1, dim=1)})
    assert torch.equal(c.student_trace["z"]["value"], c.teacher_trace["z"]["noise"][:, :1])
    assert c.latents["z"].teacher.event_shape == (1, 2, 2)


def test_orthonormal_keeps_standard_normal_noise_and_has_no_latent_term():
    torch.manual_seed(1)
    m = maps.orthonormal(2, seed=0)
    c = dgmkd.couple(linear(6, torch.ones(6), 0.5), linear(2, torch.ones(2), 0.5), 20000, latent_maps={"z": m})
    e = c.student_trace["z"]["noise"]
    assert torch.allclose(torch.cov(e.T), torch.eye(2, dtype=torch.float64), atol=0.04)
    assert list(c.latents) == [] and list(c.mapped) == ["z"]
    assert float(losses.latent(c)) == 0.0 and float(losses.unified(c)) == float(losses.surrogate(c))
    with pytest.raises(SiteMismatchError, match="site 'z'.*teacher-forced"):
        dgmkd.couple(linear(6, torch.ones(6), 0.5), linear(2, torch.ones(2), 0.5), 4, mode="teacher_forced",
                     latent_maps={"z": m})


def test_teacher_forced_with_first_feeds_the_teachers_leading_coordinates():
    t, s = linear(4, torch.ones(4), 0.5), linear(2, torch.ones(2), 0.7)
    c = dgmkd.couple(t, s, 5, mode="teacher_forced", latent_maps={"z": maps.first(2)})
    assert torch.equal(c.student_trace["z"]["value"], c.teacher_trace["z"]["value"][:, :2])
    assert float(losses.local(c)) > 0


def test_bad_maps_are_errors_naming_the_site():
    t = linear(3, torch.ones(3), 0.5)
    with pytest.raises(SiteMismatchError, match=r"site 'z'.*at least 4 coordinates"):
        dgmkd.couple(t, linear(4, torch.ones(4), 0.5), 2, latent_maps={"z": maps.first(4)})
    with pytest.raises(SiteMismatchError, match=r"site 'z'.*first\(2\).*shape \(2, 2\).*\(2, 3\)"):
        dgmkd.couple(linear(5, torch.ones(5), 0.5), t, 2, latent_maps={"z": maps.first(2)})
    with pytest.raises(SiteMismatchError, match=r"site 'y'.*not a latent.*\['z'\]"):
        dgmkd.couple(t, t, 2, latent_maps={"y": maps.first(1)})
    with pytest.raises(TypeError, match=r"latent_maps\['z'\]"):
        dgmkd.couple(t, t, 2, latent_maps={"z": lambda e: e})

    def bern(w):
        return lambda n: dgmkd.target("y", Normal(dgmkd.latent("z", Bernoulli(torch.full((n, w), 0.5))).sum(-1), 1.0))

    with pytest.raises(SiteMismatchError, match=r"site 'z'.*standard_normal.*standard_uniform"):
        dgmkd.couple(bern(4), bern(2), 2, latent_maps={"z": maps.orthonormal(2)})
    with pytest.raises(SiteMismatchError, match=r"latent site 'z'.*same"):  # law of teacher vs student
        dgmkd.couple(bern(4), linear(2, torch.ones(2), 0.5), 2, latent_maps={"z": maps.first(2)})
    with pytest.raises(ValueError, match="positive int"):
        maps.first(0)


def test_distill_a_narrower_student():
    class M(nn.Module):
        def __init__(self, width, h):
            super().__init__()
            self.width = width
            self.f = nn.Sequential(nn.Linear(width, h), nn.Tanh(), nn.Linear(h, 3))

        def forward(self, n):
            z = dgmkd.latent("z", Independent(Normal(torch.zeros(n, self.width), 1.0), 1))
            return dgmkd.target("y", Independent(Normal(self.f(z), 0.3), 1))

    torch.manual_seed(0)
    teacher, student = M(6, 32), M(2, 16)
    with torch.no_grad():
        teacher.f[0].weight[:, 2:] = 0  # the teacher's output depends on its first two coordinates only
    with pytest.raises(SiteMismatchError, match="site 'z'"):
        dgmkd.distill(teacher, student, 8, steps=1, progress=False)
    h = dgmkd.distill(teacher, student, 256, steps=150, lr=1e-2, progress=False, latent_maps={"z": maps.first(2)})
    # the student can match p_T(y | eps) exactly (the surrogate's floor is 0): the loss falls by > 10x
    assert np.mean(h["loss"][-10:]) < 0.1 * np.mean(h["loss"][:10])


def test_select_takes_chosen_coordinates_in_order():
    t = linear(4, [1.0, 2.0, 3.0, 4.0], 0.5, prior_scale=[1.0, 2.0, 3.0, 4.0])
    s = linear(2, [1.0, 2.0], 0.5, prior_scale=[3.0, 2.0])
    c = dgmkd.couple(t, s, 6, latent_maps={"z": maps.select([2, 1])})
    eps = c.teacher_trace["z"]["noise"]
    assert torch.equal(c.student_trace["z"]["noise"], eps[:, [2, 1]])
    assert torch.equal(c.latents["z"].teacher.base_dist.scale.expand(6, 2)[0], torch.tensor([3.0, 2.0], dtype=torch.float64))
    assert float(losses.latent(c)) == pytest.approx(0.0, abs=1e-12)  # the same conditionals at those coordinates
    with pytest.raises(SiteMismatchError, match=r"site 'z'.*at least 6"):
        dgmkd.couple(t, s, 2, latent_maps={"z": maps.select([5, 0])})
    with pytest.raises(ValueError, match="distinct"):
        maps.select([1, 1])


@pytest.mark.slow
def test_latent_width_example_runs_and_its_report_rebuilds(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "examples" / "latent_width.py"
    spec = importlib.util.spec_from_file_location("latent_width", path)
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    ex.main(["--seeds", "0", "--steps", "50", "--eval-steps", "20", "--out", str(tmp_path)])
    first = (tmp_path / "report.md").read_bytes()
    ex.report(tmp_path)
    assert (tmp_path / "report.md").read_bytes() == first
    assert "| kd-select |" in first.decode()
