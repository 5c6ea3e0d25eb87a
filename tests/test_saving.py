"""dgmkd.save / dgmkd.load: safetensors weights, library models rebuilt from their record."""

import json

import pytest
import torch
from torch import nn

import dgmkd
from dgmkd.models import MLPDGM, HelmholtzMachine, VRNN
from dgmkd.models.classifiers import student_net
from dgmkd.models.flows import Glow, maf
from dgmkd.models.hvae import LadderVAE
from dgmkd.saving import LoadError, build_record


def _perturb(m):
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


@pytest.mark.parametrize("make, call", [
    (lambda: MLPDGM(latent_dims=(2, 3), hidden=8, out_dim=2), lambda m: m(5)),
    (lambda: LadderVAE(image_size=8, width=8, latent_dims=(4, 2)), lambda m: m(3)),
    (lambda: maf(3, steps=2, hidden=8), lambda m: m.log_prob(torch.randn(4, 3))),
    (lambda: Glow((2, 4, 4), levels=1, steps=2, hidden=8), lambda m: m.log_prob(torch.randn(2, 2, 4, 4))),
    (lambda: HelmholtzMachine(6), lambda m: m(4)),
    (lambda: VRNN(1, 8, 2, 5), lambda m: m(2)),
    (lambda: student_net(10, 1), lambda m: m.eval()(torch.randn(2, 1, 8, 8))),
])
def test_library_models_are_rebuilt_from_the_file_alone(tmp_path, make, call):
    torch.manual_seed(0)
    m = _perturb(make()).eval()
    path = dgmkd.save(m, tmp_path / "m.safetensors")
    torch.manual_seed(123)  # a rebuild draws other initial weights: the file's must replace all of them
    r = dgmkd.load(path)
    assert type(r) is type(m) and not r.training
    sd, rd = m.state_dict(), r.state_dict()
    assert list(sd) == list(rd) and all(torch.equal(sd[k], rd[k]) for k in sd)
    torch.manual_seed(7)
    a = call(m)
    torch.manual_seed(7)
    b = call(r)
    fa, fb = (torch.utils._pytree.tree_flatten(x)[0] for x in (a, b))
    assert all(torch.equal(x, y) for x, y in zip(fa, fb) if isinstance(x, torch.Tensor))


def test_build_record_keeps_tuples_and_names_the_builder():
    m = LadderVAE(image_size=8, width=8, latent_dims=(4, 2))
    rec = build_record(m)
    assert rec["builder"] == "dgmkd.models.hvae.LadderVAE"
    assert rec["kwargs"]["latent_dims"] == {"__tuple__": [4, 2]}
    f = maf(3, steps=2)
    assert build_record(f)["builder"] == "dgmkd.models.flows.maf"  # the factory, not the ZukoFlow class
    assert build_record(f)["kwargs"] == {"features": 3, "steps": 2}


def test_load_into_your_own_module(tmp_path):
    class Mine(nn.Module):
        def __init__(self, h):
            super().__init__()
            self.a = nn.Linear(3, h)
            self.b = nn.Linear(h, 1)

    m = Mine(4)
    dgmkd.save(m, tmp_path / "mine.safetensors")
    n = dgmkd.load(Mine(4), tmp_path / "mine.safetensors")
    assert all(torch.equal(x, y) for x, y in zip(m.state_dict().values(), n.state_dict().values()))
    with pytest.raises(LoadError, match=r"did not build.*dgmkd.load\(module, path\)"):
        dgmkd.load(tmp_path / "mine.safetensors")
    with pytest.raises(LoadError) as e:
        dgmkd.load(Mine(5), tmp_path / "mine.safetensors")
    msg = str(e.value)
    assert "'a.weight': saved (4, 3), module (5, 3)" in msg and "'b.weight': saved (1, 4), module (1, 5)" in msg


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    dgmkd.save(nn.Sequential(nn.Linear(2, 2)), tmp_path / "a.safetensors")
    with pytest.raises(LoadError, match=r"missing tensors \['1.bias', '1.weight'\]"):
        dgmkd.load(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), tmp_path / "a.safetensors")
    with pytest.raises(LoadError, match=r"unexpected tensors \['0.bias', '0.weight'\]"):
        dgmkd.load(nn.Sequential(), tmp_path / "a.safetensors")


def test_a_subclass_or_unrecordable_arguments_are_not_rebuilt(tmp_path):
    class Sub(MLPDGM):
        pass

    s = Sub(latent_dims=(2,), hidden=4, out_dim=1)
    assert build_record(s) is None
    dgmkd.save(s, tmp_path / "s.safetensors")
    with pytest.raises(LoadError, match="did not build"):
        dgmkd.load(tmp_path / "s.safetensors")
    m = MLPDGM(latent_dims=(2,), hidden=4, out_dim=1)
    m.__dict__["_dgmkd_build"] = {"builder": "dgmkd.models.MLPDGM", "kwargs": None, "why": "x"}
    dgmkd.save(m, tmp_path / "m.safetensors")
    with pytest.raises(LoadError, match="cannot be recorded"):
        dgmkd.load(tmp_path / "m.safetensors")


def test_the_file_is_plain_safetensors_with_a_json_header(tmp_path):
    from safetensors import safe_open

    m = MLPDGM(latent_dims=(2,), hidden=4, out_dim=1)
    dgmkd.save(m, tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        meta = f.metadata()
        assert sorted(f.keys()) == sorted(m.state_dict())
    assert json.loads(meta["dgmkd.build"])["kwargs"] == {"latent_dims": {"__tuple__": [2]}, "hidden": 4, "out_dim": 1}


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no saved model"):
        dgmkd.load(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(LoadError, match="not a readable safetensors file"):
        dgmkd.load(tmp_path / "junk.safetensors")
    with pytest.raises(TypeError, match="give the path"):
        dgmkd.load(nn.Linear(1, 1))
