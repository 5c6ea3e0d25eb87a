"""§3.5 of Chen et al. 2023: vanilla KD, sequence-level KD, feature KD and GAN distillation are
the unified losses on particular DGMs — checked as exact identities on the examples' models —
and every example runs (smoke test)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import dgmkd
from dgmkd import losses

EXAMPLES = Path(__file__).parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import feature_kd  # noqa: E402
import gan_distill  # noqa: E402
import sequence_kd  # noqa: E402
import vanilla_kd  # noqa: E402


@pytest.mark.parametrize("T", [1.0, 2.0, 5.0])
def test_vanilla_kd_is_hintons_loss_at_any_temperature(T):
    torch.manual_seed(0)
    t, s = vanilla_kd.Classifier(64), vanilla_kd.Classifier(8)
    x = torch.randn(100, 64)
    c = dgmkd.couple(t, s, x)
    with torch.no_grad():
        pt = F.softmax(t.net(x) / T, -1)
    hinton = T ** 2 * F.kl_div(F.log_softmax(s.net(x) / T, -1), pt, reduction="batchmean")
    assert torch.allclose(losses.surrogate(c, temperature=T), hinton, atol=1e-6)


def test_temperature_needs_a_categorical_site():
    c = dgmkd.couple(gan_distill.Generator(8), gan_distill.Generator(8), 4)
    with pytest.raises(TypeError, match="temperature applies to Categorical"):
        losses.surrogate(c, "kl", temperature=2.0)


def test_sequence_level_kd_is_eq_3_on_teacher_sequences():
    torch.manual_seed(0)
    t, s = sequence_kd.TokenGRU(32), sequence_kd.TokenGRU(8)
    c = dgmkd.couple(t, s, 64)
    seq = torch.stack([c.targets[f"y{i}"].value for i in range(t.length)], 1)  # the teacher's samples

    def logits(m, seq):  # teacher-forced pass over a given sequence, no sites
        tok = torch.full((len(seq),), m.vocab, dtype=torch.long)
        h, out = torch.zeros(len(seq), m.gru.hidden_size), []
        for i in range(m.length):
            h = m.gru(m.emb(tok), h)
            out.append(m.head(h))
            tok = seq[:, i]
        return torch.stack(out, 1)

    lt, ls = F.log_softmax(logits(t, seq), -1), F.log_softmax(logits(s, seq), -1)
    eq3 = (lt.exp() * (lt - ls)).sum((-1, -2)).mean()
    assert torch.allclose(losses.surrogate(c), eq3, atol=1e-5)
    assert list(c.latents) == []


def test_feature_kd_with_adapter_is_fitnets():
    torch.manual_seed(0)
    t, s = feature_kd.Net(32), feature_kd.Net(8, teacher_width=32)
    x = torch.randn(50, 64)
    c = dgmkd.couple(t, s, x)
    with torch.no_grad():
        ht = t.body(x)
    fitnets = ((ht - s.adapter(s.body(x))) ** 2).sum(-1).mean()
    assert torch.allclose(losses.latent(c, "l2"), fitnets, atol=1e-5)
    losses.latent(c, "l2").backward()
    assert s.adapter.weight.grad is not None and s.body[0].weight.grad is not None


def test_gan_distillation_is_output_plus_feature_distillation():
    torch.manual_seed(0)
    t, s = gan_distill.Generator(32), gan_distill.Generator(8, teacher_width=32)
    c = dgmkd.couple(t, s, 100)
    z = c.latents["z"].value  # the shared noise (standard normal: z = eps in both models)
    with torch.no_grad():
        t1 = torch.relu(t.l1(z)); t2 = torch.relu(t.l2(t1)); xt = t.out(t2)
    s1 = torch.relu(s.l1(z)); s2 = torch.relu(s.l2(s1)); xs = s.out(s2)
    out = ((xt - xs) ** 2).sum(-1).mean()
    feat = ((t1 - s.a1(s1)) ** 2).sum(-1).mean() + ((t2 - s.a2(s2)) ** 2).sum(-1).mean()
    lam = 0.3
    got = losses.unified(c, latent_weight=lam, divergence="l2", latent_divergence="l2")
    assert torch.allclose(got, out + lam * feat, atol=1e-5)  # the z site adds 0: same N(0, I) in both
    assert torch.allclose(losses.surrogate(c, "w2"), out, atol=1e-5)  # W2 between point masses


@pytest.mark.parametrize("script,args", [
    ("vanilla_kd.py", ["--steps", "20"]),
    ("sequence_kd.py", ["--steps", "10"]),
    ("feature_kd.py", ["--steps", "20"]),
    ("gan_distill.py", ["--steps", "20"]),
    ("pyro_model.py", ["--steps", "10"]),
])
def test_example_runs(script, args, tmp_path):
    r = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip()
