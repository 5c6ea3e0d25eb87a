"""KD-based VAE continual learning: the conditional ladder VAE, the four L_pre methods, the digit
splits and the `continual` experiment."""

import copy

import pytest
import torch

import dgmkd
from dgmkd import losses
from dgmkd.data import digits_split
from dgmkd.data.splits import SPLITS, attribute_split, continual_split, ink_threshold
from dgmkd.methods.continual import METHODS, consistency, pre_loss, train_continual
from dgmkd.models.cond_hvae import CondLadderVAE, train_cond_elbo

SITES = ["z5", "z4", "z3", "z2", "z1"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed=0, width=4):
    torch.manual_seed(seed)
    return CondLadderVAE(num_conditions=2, image_size=8, width=width, latent_dims=(6, 4, 2))


# ------------------------------------------------------------------------------- the model
def test_sites_match_across_conditions_and_models():
    m = _model()
    names = []
    for c in (0, 1, torch.tensor([0, 1, 1])):
        with dgmkd.handlers.trace() as tr:
            x = m(3, c)
        assert x.shape == (3, 1, 8, 8)
        names.append([(n, s["kind"]) for n, s in tr.sites.items()])
    assert names[0] == names[1] == names[2] == [(s, "latent") for s in ["z3", "z2", "z1"]] + [("x", "target")]
    with dgmkd.handlers.trace() as tr:
        m.inference()(torch.rand(3, 1, 8, 8), 1)
    assert list(tr.sites) == ["z3", "z2", "z1", "x_rec"]
    # couple() pairs two different models on the same condition, site by site
    cp = dgmkd.couple(m, _model(1), 5, 0)
    assert list(cp.latents) == ["z3", "z2", "z1"] and list(cp.targets) == ["x"]
    assert float(losses.unified(cp).detach()) > 0


def test_condition_enters_every_block():
    """Changing c changes the learned top prior, every prior, the decoder and the encoder."""
    m = _model()
    oh0, oh1 = (m.onehot(c, 4, torch.zeros(1)) for c in (0, 1))
    with torch.no_grad():
        m.top_prior.weight.normal_()
    p0, p1 = m._prior_c(2, None, oh0), m._prior_c(2, None, oh1)
    assert not torch.allclose(p0.loc, p1.loc)  # learned top prior depends on c
    z = torch.randn(4, 4)
    assert not torch.allclose(m._prior_c(0, z, oh0).loc, m._prior_c(0, z, oh1).loc)
    assert not torch.allclose(m._prior_c(1, z[:, :2], oh0).loc, m._prior_c(1, z[:, :2], oh1).loc)
    z1 = torch.randn(4, 6)
    assert not torch.allclose(m.decoder(torch.cat([z1, oh0], -1)), m.decoder(torch.cat([z1, oh1], -1)))
    x = torch.rand(4, 1, 8, 8)
    b0, b1 = m.bottom_up(x, 0), m.bottom_up(x, 1)
    assert all(not torch.allclose(a[0], b[0]) for a, b in zip(b0, b1))
    # the gradient of condition 0's ELBO reaches the top prior's weights of condition 0 only
    m.zero_grad()
    (-m.elbo(x, c=0)[0].mean()).backward()
    g = m.top_prior.weight.grad
    assert g[:, 0].abs().sum() > 0 and g[:, 1].abs().sum() == 0


def test_condition_validation_and_defaults():
    m = _model()
    with pytest.raises(ValueError, match="conditions must be in"):
        m(2, 2)
    with pytest.raises(ValueError, match="condition must be"):
        m(2, torch.tensor([0, 1, 0]))
    torch.manual_seed(0)
    a = m.sample(3)
    torch.manual_seed(0)
    assert torch.equal(a, m.sample(3, c=0))
    lw = m.log_weights(torch.rand(2, 1, 8, 8), k=3, c=torch.tensor([0, 1]))
    assert lw.shape == (3, 2) and torch.isfinite(lw).all()


# ------------------------------------------------------------------------------- the methods
@pytest.mark.parametrize("method", ["unified", "local"])
def test_kd_pre_loss_is_zero_when_new_equals_old(method):
    old = _model()
    assert float(pre_loss(method, old, copy.deepcopy(old), 16).detach()) == 0.0
    assert float(pre_loss(method, old, copy.deepcopy(old), 16, latent_divergence="kl").detach()) == 0.0
    assert float(pre_loss(method, old, _model(1), 16).detach()) > 0


def test_lgm_consistency_is_zero_when_new_equals_old_and_replay_losses_are_elbos():
    old = _model()
    x = torch.rand(8, 1, 8, 8)
    assert float(consistency(old, copy.deepcopy(old), x)) == 0.0
    assert float(consistency(old, _model(1), x).detach()) > 0
    # without the consistency term, LGM's L_pre is CURL's: the negative ELBO on the same replay
    new = _model(1)
    torch.manual_seed(3)
    a = pre_loss("lgm", old, new, 8, consistency_weight=0.0)
    torch.manual_seed(3)
    b = pre_loss("curl", old, new, 8)
    assert torch.allclose(a, b)


@pytest.mark.parametrize("method", METHODS)
def test_r_one_is_plain_elbo_training(method):
    old = _model()
    x = torch.rand(40, 1, 8, 8)
    a, b = copy.deepcopy(old), copy.deepcopy(old)
    h = train_continual(old, a, x, method, 4, r=1.0, batch=8, seed=5, progress=False)
    train_cond_elbo(b, x, 4, c=1, batch=8, seed=5, progress=False)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert h["l_pre"] == [0.0] * 4


@pytest.mark.parametrize("method", METHODS)
def test_pre_loss_trains_new_only_and_preserves_old(method):
    old = _model()
    before = copy.deepcopy(old.state_dict())
    new = copy.deepcopy(old)
    x = torch.rand(40, 1, 8, 8)
    h = train_continual(old, new, x, method, 3, r=0.5, batch=8, seed=0, progress=False)
    assert all(torch.equal(v, old.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(p, q) for p, q in zip(new.parameters(), old.parameters()))
    assert set(h) >= {"loss", "l_new", "l_pre"}
    with pytest.raises(ValueError, match="unknown"):
        pre_loss("nope", old, new, 4)


def test_unified_with_r_zero_keeps_new_at_old():
    """r = 0 (only L_pre) from M_new == M_old: the KD losses and their gradients are zero."""
    old = _model()
    new = copy.deepcopy(old)
    train_continual(old, new, torch.rand(8, 1, 8, 8), "unified", 3, r=0.0, batch=4, seed=0, progress=False)
    for p, q in zip(new.parameters(), old.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


# ------------------------------------------------------------------------------- the splits
@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("name", SPLITS)
def test_splits_partition_the_digits(name, split):
    x, y = digits_split(split)
    (xo, yo), (xn, yn) = continual_split(name, split)
    assert len(xo) + len(xn) == len(x) and len(xo) > 0 and len(xn) > 0
    # a partition: the multiset of (image, label) rows is the same
    key = lambda a, b: sorted(map(tuple, torch.cat([a.flatten(1), b[:, None].float()], 1).tolist()))
    assert key(torch.cat([xo, xn]), torch.cat([yo, yn])) == key(x, y)
    if name == "0-4>5-9":
        assert (yo <= 4).all() and (yn >= 5).all()
    elif name == "even>odd":
        assert (yo % 2 == 0).all() and (yn % 2 == 1).all()
    else:
        thr = ink_threshold()
        assert (xo.flatten(1).sum(-1) < thr).all() and (xn.flatten(1).sum(-1) >= thr).all()
        if split == "train":  # median split: halves up to ties
            assert abs(len(xo) - len(xn)) <= 0.1 * len(x)


def test_attribute_split():
    x = torch.arange(4.0)
    attrs = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]])
    old, new = attribute_split(x, attrs, ["Male", "No_Beard"], "Male")
    assert old.tolist() == [1.0, 3.0] and new.tolist() == [0.0, 2.0]
    old, new = attribute_split(x, attrs, ["Male", "No_Beard"], "No_Beard", negate=True)
    assert old.tolist() == [1.0, 2.0] and new.tolist() == [0.0, 3.0]
    with pytest.raises(KeyError):
        attribute_split(x, attrs, ["Male", "No_Beard"], "Eyeglasses")


# ------------------------------------------------------------------------------- the experiment
def test_experiment_smoke_and_report_rebuild(tmp_path):
    from dgmkd import config as cfgmod, report as reportmod
    from dgmkd.experiments import continual as exp

    cfg = cfgmod.override(exp.Config(), {"splits": ("even>odd",), "seeds": (0,), "width": 4, "old_steps": 6,
                                         "warmup": 2, "new_steps": 3, "batch": 16,
                                         "methods": ("unified", "curl", "finetune"), "progress": False})
    dgmkd.rundir.write_json(tmp_path / "config.json", {"experiment": "continual", **cfgmod.to_dict(cfg)})
    res = exp.run(cfg, tmp_path)
    assert [r["method"] for r in res["rows"]] == ["M_old", "unified", "curl", "finetune"]
    assert (tmp_path / "samples_even_to_odd.png").is_file()
    text = (tmp_path / "report.md").read_text()
    assert "| even>odd | unified |" in text and "Goal" in text
    (tmp_path / "report.md").unlink()
    assert reportmod.rebuild(tmp_path) == text
    with pytest.raises(ValueError, match="unknown methods"):
        exp.run(cfgmod.override(exp.Config(), {"methods": ("nope",)}), tmp_path)


def test_compare_tabulates_the_tradeoff_over_r(tmp_path):
    # two runs that differ in r; the cross-run table holds each (split, method, r) with the means
    # over seeds of the Old change and the New value, and the plot is written next to the output
    from dgmkd import report as reportmod
    from dgmkd.experiments.continual import METRICS

    def write_run(d, r, fd_new):
        rows = []
        for seed, bump in ((0, 0.0), (1, 2.0)):
            base = {"split": "even>odd", "seed": seed, "r": r, "n_old": 10, "n_new": 10}
            rows.append({**base, "method": "M_old", **{f"old_{k}": 1.0 for k, _ in METRICS},
                         **{f"new_{k}": float("nan") for k, _ in METRICS}, **{f"dold_{k}": 0.0 for k, _ in METRICS}})
            for m, dfd in (("unified", 1.0), ("curl", 5.0)):
                rows.append({**base, "method": m, **{f"old_{k}": 1.0 + dfd for k, _ in METRICS},
                             **{f"new_{k}": fd_new[m] + bump for k, _ in METRICS},
                             **{f"dold_{k}": dfd + bump for k, _ in METRICS}})
        dgmkd.rundir.write_csv(d / "results.csv", rows)
        dgmkd.rundir.write_json(d / "config.json", {"experiment": "continual", "r": r})

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    write_run(a, 0.5, {"unified": 30.0, "curl": 20.0})
    write_run(b, 0.9, {"unified": 22.0, "curl": 19.0})
    text = reportmod.compare([a, b], out=tmp_path / "cmp" / "cmp.md")
    assert "| even>odd | unified | 0.5 | 2 | +2.000 | 31.00 |" in text  # means of seeds 0 and 1
    assert "| even>odd | curl | 0.9 | 2 | +6.000 | 20.00 |" in text
    assert (tmp_path / "cmp" / "tradeoff.png").is_file()
    (tmp_path / "cmp" / "tradeoff.png").unlink()
    assert "![trade-off]" not in reportmod.compare([a, b])  # without out: the table, no plot
    assert not list(tmp_path.rglob("tradeoff.png"))


# ------------------------------------------------------------------------------- CelebA (your files)
CELEBA_NAMES = ["Eyeglasses", "Male", "No_Beard", "Smiling"]


def _celeba_fixture(root):
    """10 train faces (4 Male, 3 with a beard, 2 with eyeglasses) and 4 test faces (2 Male)."""
    from datafiles import write_celeba

    male = [1, 1, 1, 1, -1, -1, -1, -1, -1, -1] + [1, -1, 1, -1]
    no_beard = [-1, -1, -1, 1, 1, 1, 1, 1, 1, 1] + [-1, 1, 1, 1]
    glasses = [1, -1, -1, -1, 1, -1, -1, -1, -1, -1] + [1, -1, 1, -1]
    attrs = [[g, m, b, 1] for g, m, b in zip(glasses, male, no_beard)]
    write_celeba(root, n=14, partition=[0] * 10 + [2] * 4, names=CELEBA_NAMES, attrs=attrs, shape=(40, 32))
    return {"Female>Male": (6, 4), "No_Beard>Beard": (7, 3), "No_Eyeglasses>Eyeglasses": (8, 2)}


def test_experiment_on_celeba_files(tmp_path, monkeypatch):
    """End to end on a tiny CelebA folder: the parts are the attribute's, the model and the feature
    network (hvae-compress's, trained on the training faces) are 3-channel 16x16, metrics finite."""
    import csv
    import math

    from dgmkd import config as cfgmod
    from dgmkd.experiments import continual as exp
    from dgmkd.metrics import features as F

    counts = _celeba_fixture(tmp_path / "celeba")
    train_feature_net, seen = F.train_feature_net, {}

    def short_feature_net(x, y, **kw):  # the real one, with a handful of steps
        seen["x"], seen["y"] = tuple(x.shape), y.tolist()
        return train_feature_net(x, y, **{**kw, "steps": 2, "batch": 4})

    monkeypatch.setattr(F, "train_feature_net", short_feature_net)
    out = tmp_path / "run"
    out.mkdir()
    cfg = cfgmod.override(exp.Config(), {"dataset": "celeba", "data_root": str(tmp_path / "celeba"),
                                         "image_size": "16", "splits": "Female>Male", "seeds": "0", "width": 2,
                                         "latent_dims": "4,2", "old_steps": 2, "warmup": 1, "new_steps": 2,
                                         "batch": 4, "methods": "unified,curl", "grid": 2, "progress": False})
    dgmkd.rundir.write_json(out / "config.json", {"experiment": "continual", **cfgmod.to_dict(cfg)})
    exp.run(cfg, out)
    assert seen["x"] == (10, 3, 16, 16) and seen["y"] == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]  # Male labels
    assert (out / "feature_cnn.pt").is_file() and (out / "samples_Female_to_Male.png").is_file()
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["M_old", "unified", "curl"]
    for r in rows:
        assert (int(r["n_old"]), int(r["n_new"])) == counts["Female>Male"]
        assert float(r["r"]) == pytest.approx(0.4)
        keys = [f"old_{k}" for k, _ in exp.METRICS]
        keys += [f"new_{k}" for k, _ in exp.METRICS] if r["method"] != "M_old" else []
        assert all(math.isfinite(float(r[k])) for k in keys), r
    state = torch.load(out / "models" / "new_Female_to_Male_unified_seed0.pt", weights_only=True)
    CondLadderVAE(image_size=16, channels=3, width=2, latent_dims=(4, 2)).load_state_dict(state)  # 3x16x16 model
    assert "CelebA attribute splits" in (out / "report.md").read_text()
    # the other two splits divide the faces by their attribute as well
    from dgmkd.data import load_celeba
    from dgmkd.data.splits import celeba_split

    x, a, names = load_celeba(tmp_path / "celeba", "train", size=8)
    for split, (n_old, n_new) in counts.items():
        xo, xn = celeba_split(split, x, a, names)
        assert (len(xo), len(xn)) == (n_old, n_new)


def test_config_errors_name_the_key_and_the_choices(tmp_path):
    from dgmkd import config as cfgmod
    from dgmkd.cli import main
    from dgmkd.experiments import continual as exp

    def err(sets):
        with pytest.raises(cfgmod.ConfigError) as e:
            cfgmod.override(exp.Config(), sets)
        return str(e.value)

    root = str(tmp_path)
    msg = err({"dataset": "celeba", "data_root": root})  # the default splits are the digits'
    assert msg.startswith("splits:") and "'0-4>5-9'" in msg
    assert "Female>Male, No_Beard>Beard, No_Eyeglasses>Eyeglasses" in msg
    msg = err({"splits": "Female>Male"})
    assert msg.startswith("splits:") and "0-4>5-9, even>odd, thin>thick" in msg
    msg = err({"dataset": "celeba", "splits": "Female>Male"})
    assert msg.startswith("data_root:") and "list_attr_celeba.txt" in msg
    assert err({"dataset": "celeba", "splits": "Female>Male", "data_root": root + "/nope"}).startswith("data_root:")
    msg = err({"dataset": "mnist"})
    assert msg.startswith("dataset:") and "digits, celeba" in msg
    msg = err({"dataset": "celeba", "splits": "Female>Male", "data_root": root, "image_size": 48})
    assert msg.startswith("image_size:") and "8, 16, 32, 64" in msg
    assert err({"image_size": 16}).startswith("image_size:")
    # a valid celeba config passes; the command line turns a bad one into exit code 2
    cfgmod.override(exp.Config(), {"dataset": "celeba", "data_root": root, "splits": "No_Beard>Beard,Female>Male"})
    assert main(["run", "continual", "--set", "dataset=celeba", "--set", "splits=Female>Male",
                 "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
    # an attribute file without the split's column: stopped before any image is read or model trained
    from datafiles import write_celeba
    from dgmkd.data import DataFormatError

    write_celeba(tmp_path / "c", n=2, partition=(0, 2), shape=(8, 8))  # columns 5_o_Clock_Shadow, Male, Smiling
    cfg = cfgmod.override(exp.Config(), {"dataset": "celeba", "data_root": str(tmp_path / "c"),
                                         "splits": "No_Eyeglasses>Eyeglasses", "progress": False})
    with pytest.raises(DataFormatError, match="no column \\['Eyeglasses'\\]"):
        exp.run(cfg, tmp_path / "run")
