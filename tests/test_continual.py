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
from dgmkd.models.cond_hvae import CondLadderVAE
from dgmkd.train import fit, minibatches

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
    p0, p1 = m._prior(2, None, oh0, 4, oh0), m._prior(2, None, oh1, 4, oh1)
    assert not torch.allclose(p0.loc, p1.loc)  # learned top prior depends on c
    z = torch.randn(4, 4)
    assert not torch.allclose(m._prior(0, z, oh0, 4, z).loc, m._prior(0, z, oh1, 4, z).loc)
    assert not torch.allclose(m._prior(1, z[:, :2], oh0, 4, z).loc, m._prior(1, z[:, :2], oh1, 4, z).loc)
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
    fit(lambda a_, step: b.loss(a_[0], 1.0, 1), b, minibatches(x, batch=8), 4, seed=5, progress=False)
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
def _run(tmp_path, name="run", **sets):
    from dgmkd import config as cfgmod
    from dgmkd.experiments import continual as exp

    cfg = cfgmod.override(exp.Config(), {**exp.TEST, "progress": False, **sets})
    out = tmp_path / name
    dgmkd.harness.write_json(out / "config.json", {"experiment": "continual", **cfgmod.to_dict(cfg)})
    exp.run(cfg, out)
    return out


def test_experiment_chooses_r_on_validation_images_and_rebuilds_its_report(tmp_path):
    from dgmkd import report as reportmod

    out = _run(tmp_path)
    rows = dgmkd.harness.read_csv(out / "results.csv")
    share = rows[0]["share"]
    assert [(r["method"], r["r"]) for r in rows if r["seed"] == 0] == [
        ("M_old", None), ("unified", share), ("curl", share), ("unified", 0.9), ("curl", 0.9), ("finetune", 1.0)]
    for r in [r for r in rows if r["method"] != "M_old"]:  # both splits scored, the change measured against the seed's M_old
        base = next(b for b in rows if b["method"] == "M_old" and b["seed"] == r["seed"])
        assert r["test_dold_fd"] == pytest.approx(r["test_old_fd"] - base["test_old_fd"])
        assert r["val_new_fd"] is not None and r["test_new_fd"] is not None
    # the val split is cut from the training images; the test images are the digits' test split
    (xo, xn), (to, tn) = continual_split("even>odd", "train"), continual_split("even>odd", "test")
    assert rows[0]["n_old"] + rows[0]["n_new"] < len(xo[0]) + len(xn[0])
    text = (out / "report.md").read_text()
    assert "| even>odd | unified |" in text and "chosen" in text and "Goal" not in text and "MET" not in text
    assert (out / "samples_even_to_odd_r0.9_new.png").is_file()
    (out / "report.md").unlink()
    assert reportmod.rebuild(out) == text


def test_the_chosen_r_minimizes_the_validation_criterion_not_the_test_one():
    from dgmkd.experiments.continual import METRICS, _select

    def row(r, seed, val, test):
        vals = {f"{p}_{w}_{k}": v for p, v in (("val", val), ("test", test)) for w in ("old", "new", "dold")
                for k, _ in METRICS}
        return {"split": "s", "method": "unified", "seed": seed, "r": r, **vals}

    rows = [row(0.5, 0, 1.0, 9.0), row(0.5, 1, 1.2, 9.0), row(0.9, 0, 2.0, 0.0), row(0.9, 1, 2.2, 0.0)]
    sweep, chosen, _ = _select(rows)
    assert len(sweep) == 2 and [s["r"] for s in chosen] == [0.5]
    assert chosen[0]["criterion"] == pytest.approx(2.2) and chosen[0]["test_new_fd_mean"] == 9.0


def test_compare_pools_runs_and_chooses_r_on_validation(tmp_path):
    from dgmkd import report as reportmod

    a = _run(tmp_path, "a", r_grid="", r=0.6, methods="unified,finetune")
    b = _run(tmp_path, "b", r_grid="", r=0.9, methods="unified,finetune")
    text = reportmod.compare([a, b], out=tmp_path / "cmp" / "cmp.md")
    assert "Runs pooled" in text and "| even>odd | unified | 0.6 |" in text and "| even>odd | unified | 0.9 |" in text
    pooled = text.split(f"## {a}")[0]  # before each run's own report
    assert pooled.count("| even>odd | finetune | 1 |") == 2  # in the test table and the sweep, not once per run
    assert (tmp_path / "cmp" / "tradeoff.png").is_file()
    (tmp_path / "cmp" / "tradeoff.png").unlink()
    assert "![trade-off]" not in reportmod.compare([a, b])  # without out: the table, no plot
    assert not list(tmp_path.rglob("tradeoff.png"))


@pytest.mark.slow
def test_unified_forgets_the_old_digits_least():
    """docs/continual.md: on a label split, unified distillation from M_old degrades the old
    condition least of the paper's four methods (FD and MMD² Old change, test images)."""
    import tempfile

    from pathlib import Path

    from dgmkd.cli import main

    out = Path(tempfile.mkdtemp()) / "run"
    assert main(["run", "continual", "--quick", "--quiet", "--out", str(out), "--set", "methods=unified,local,lgm,curl",
                 "--set", "old_steps=800", "--set", "new_steps=250"]) == 0
    rows = [r for r in dgmkd.harness.read_csv(out / "results.csv") if r["method"] != "M_old"]
    for k in ("fd", "mmd2"):
        assert min(rows, key=lambda r: r[f"test_dold_{k}"])["method"] == "unified", k


# ------------------------------------------------------------------------------- CelebA (your files)
CELEBA_NAMES = ["Eyeglasses", "Male", "No_Beard", "Smiling"]


def _celeba_fixture(root):
    """10 train faces (4 Male, 3 with a beard, 2 with eyeglasses), 4 validation and 4 test faces (2 Male each)."""
    from datafiles import write_celeba

    male = [1, 1, 1, 1, -1, -1, -1, -1, -1, -1] + [1, -1, 1, -1] * 2
    no_beard = [-1, -1, -1, 1, 1, 1, 1, 1, 1, 1] + [-1, 1, 1, 1] * 2
    glasses = [1, -1, -1, -1, 1, -1, -1, -1, -1, -1] + [1, -1, 1, -1] * 2
    attrs = [[g, m, b, 1] for g, m, b in zip(glasses, male, no_beard)]
    write_celeba(root, n=18, partition=[0] * 10 + [1] * 4 + [2] * 4, names=CELEBA_NAMES, attrs=attrs, shape=(40, 32))
    return {"Female>Male": (6, 4), "No_Beard>Beard": (7, 3), "No_Eyeglasses>Eyeglasses": (8, 2)}


def test_experiment_on_celeba_files(tmp_path, monkeypatch):
    """End to end on a tiny CelebA folder: the parts are the attribute's, the model and the feature
    network (hvae-compress's, trained on the training faces) are 3-channel 16x16, metrics finite."""
    import math

    from dgmkd import config as cfgmod
    from dgmkd.experiments import continual as exp
    from dgmkd import feature_net as F

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
    dgmkd.harness.write_json(out / "config.json", {"experiment": "continual", **cfgmod.to_dict(cfg)})
    exp.run(cfg, out)
    assert seen["x"] == (10, 3, 16, 16) and seen["y"] == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]  # Male labels
    assert (out / "feature_cnn.pt").is_file() and (out / "samples_Female_to_Male_new.png").is_file()
    rows = dgmkd.harness.read_csv(out / "results.csv")
    assert [r["method"] for r in rows] == ["M_old", "unified", "curl"]
    for r in rows:
        assert (r["n_old"], r["n_new"]) == counts["Female>Male"] and r["share"] == pytest.approx(0.4)
        keys = [f"{p}_{c}_{k}" for p in ("val", "test") for c in ("old", "new")[:1 + (r["method"] != "M_old")]
                for k, _ in exp.METRICS]
        assert all(math.isfinite(r[k]) for k in keys), r
    rebuilt = dgmkd.load(out / "models" / "student-unified-Female_to_Male-r0.4-s0.safetensors")
    assert isinstance(rebuilt, CondLadderVAE)
    dgmkd.load(CondLadderVAE(image_size=16, channels=3, width=2, latent_dims=(4, 2)),  # a 3x16x16 model
               out / "models" / "student-unified-Female_to_Male-r0.4-s0.safetensors")
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
    msg = err({"dataset": "fashion"})
    assert msg.startswith("dataset:") and "digits, mnist, mnist-idx, celeba" in msg
    assert err({"dataset": "mnist", "image_size": 28}).startswith("image_size:")  # mnist runs padded to 32
    cfgmod.override(exp.Config(), {"dataset": "mnist"})  # embedded: no data_root
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
