"""Image metrics (dgmkd.metrics): each is ~0 (1NN: 0.5) for two samples of one distribution, grows
with a known shift, and matches closed forms where one exists."""

import math

import pytest
import torch
from torch import nn

from dgmkd.metrics import (FeatureCNN, compare, emd, frechet_distance, kernel_distance, median_bandwidth, mmd2,
                           nn1_accuracy)
from dgmkd.feature_net import train_feature_net

pytestmark = pytest.mark.usefixtures("one_thread")



def gauss(n, d, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) + shift


# ------------------------------------------------------------------------------------ EMD
def test_emd_hand_solvable_cases():
    # two points each, optimal plan 0->2, 1->3 (or crossing: same cost on a line): 2
    assert float(emd(torch.tensor([[0.0], [1.0]]), torch.tensor([[2.0], [3.0]]))) == pytest.approx(2.0)
    # unequal sizes: mass 1 at 0 split in halves to 1 and 3: 0.5*1 + 0.5*3
    assert float(emd(torch.tensor([[0.0]]), torch.tensor([[1.0], [3.0]]))) == pytest.approx(2.0)
    # corners of a unit square matched to the square shifted by (3, 4): every point moves 5
    sq = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    assert float(emd(sq, sq[torch.tensor([3, 1, 2, 0])] + torch.tensor([3.0, 4.0]))) == pytest.approx(5.0)
    # the optimum is not the greedy/in-order matching: x = {0, 2}, y = {1, 3}; in order: 1 + 1 = 2 -> mean 1;
    # a wrong "reverse" matching would give (3 + 1)/2 = 2
    assert float(emd(torch.tensor([[0.0], [2.0]]), torch.tensor([[3.0], [1.0]]))) == pytest.approx(1.0)
    # squared Euclidean ground cost: squared W2 of a shift by 2
    assert float(emd(torch.tensor([[0.0], [1.0]]), torch.tensor([[2.0], [3.0]]), metric="sqeuclidean")) == pytest.approx(4.0)


def test_emd_same_distribution_small_and_grows_with_shift():
    same = float(emd(gauss(300, 2, seed=1), gauss(300, 2, seed=2)))
    shifted = [float(emd(gauss(300, 2, seed=1), gauss(300, 2, shift=s, seed=2))) for s in (0.5, 1.0, 2.0)]
    assert same < 0.35
    assert shifted[0] < shifted[1] < shifted[2]
    # W1 >= |mean difference| = s * sqrt(2)
    assert shifted[2] > 2 * math.sqrt(2) - 0.2


def test_emd_bad_input():
    with pytest.raises(ValueError, match="same d"):
        emd(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="metric"):
        emd(torch.zeros(3, 2), torch.zeros(3, 2), metric="cosine")


# ------------------------------------------------------------------------------------ 1NN
def test_nn1_half_for_same_distribution_and_one_for_separated():
    accs = [float(nn1_accuracy(gauss(400, 3, seed=s), gauss(400, 3, seed=s + 100))) for s in range(3)]
    assert abs(sum(accs) / 3 - 0.5) < 0.04
    a1 = float(nn1_accuracy(gauss(400, 3, seed=1), gauss(400, 3, shift=1.0, seed=2)))
    a2 = float(nn1_accuracy(gauss(400, 3, seed=1), gauss(400, 3, shift=3.0, seed=2)))
    assert 0.6 < a1 < a2
    assert float(nn1_accuracy(gauss(50, 3), gauss(50, 3, shift=100.0))) == 1.0


def test_nn1_leaves_the_point_itself_out():
    # identical copies: each point's nearest *other* point is its copy in the other sample -> 0
    x = gauss(50, 2)
    assert float(nn1_accuracy(x, x.clone())) == 0.0


# ------------------------------------------------------------------------------------ MMD
def test_mmd_zero_same_grows_with_shift_and_bandwidth():
    same = float(mmd2(gauss(400, 2, seed=1), gauss(400, 2, seed=2)))
    vals = [float(mmd2(gauss(400, 2, seed=1), gauss(400, 2, shift=s, seed=2))) for s in (0.5, 1.0, 2.0)]
    assert abs(same) < 0.01
    assert vals[0] < vals[1] < vals[2] and vals[0] > 5 * abs(same)
    # median heuristic of {0, 1} pooled with {0, 1}: nonzero squared distances are all 1
    assert float(median_bandwidth(torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [1.0]]))) == pytest.approx(1.0)
    # a fixed bandwidth equal to the heuristic one gives the same value
    x, y = gauss(100, 2, seed=3), gauss(100, 2, shift=1.0, seed=4)
    assert float(mmd2(x, y, bandwidth=median_bandwidth(x, y))) == pytest.approx(float(mmd2(x, y)), rel=1e-5)
    with pytest.raises(ValueError, match="bandwidth"):
        mmd2(x, y, bandwidth=0.0)


# ------------------------------------------------------------------------------------ FD / KD
class Flat(nn.Module):
    """Identity features: FD then has the closed form of two Gaussians."""

    def forward(self, x):
        return x.flatten(1)


def images(n, shift=0.0, seed=0):
    return gauss(n, 4, shift, seed).view(n, 1, 2, 2)


def test_frechet_distance_matches_gaussian_closed_form():
    same = float(frechet_distance(images(4000, seed=1), images(4000, seed=2), Flat()))
    assert same < 0.02
    x = images(1000, seed=3)
    for s in (0.5, 1.0):
        # a pure shift of the same points: equal covariances, FD = ||mu1 - mu2||^2 = 4 s^2 exactly
        assert float(frechet_distance(x, x + s, Flat())) == pytest.approx(4 * s * s, rel=1e-4)
    # scaling by 2: ||mu - 2 mu||^2 + Tr(S + 4 S - 2 (4 S^2)^(1/2)) = ||mu||^2 + Tr(S) (sample moments)
    f = x.flatten(1).double()
    want = float(f.mean(0).pow(2).sum() + torch.cov(f.T).trace())
    assert float(frechet_distance(x, 2 * x, Flat())) == pytest.approx(want, rel=1e-3)


def test_frechet_does_not_change_the_callers_feature_module():
    net = FeatureCNN(1, 8, 10, 16)
    frechet_distance(torch.rand(10, 1, 8, 8), torch.rand(10, 1, 8, 8), net)
    assert next(net.parameters()).dtype == torch.float32


def test_kernel_distance_zero_same_grows_with_shift():
    same, _ = kernel_distance(images(400, seed=1), images(400, seed=2), Flat(), subsets=10, subset_size=200)
    a, _ = kernel_distance(images(400, seed=1), images(400, shift=0.5, seed=2), Flat(), subsets=10, subset_size=200)
    b, _ = kernel_distance(images(400, seed=1), images(400, shift=1.0, seed=2), Flat(), subsets=10, subset_size=200)
    assert abs(float(same)) < 0.1 * float(a)
    assert float(a) < float(b)


def test_frechet_bad_input():
    with pytest.raises(ValueError, match="N, C, H, W"):
        frechet_distance(torch.rand(10, 4), torch.rand(10, 4), Flat())
    with pytest.raises(TypeError, match="nn.Module"):
        frechet_distance(torch.rand(10, 1, 2, 2), torch.rand(10, 1, 2, 2), lambda x: x)


# ------------------------------------------------------------------------------------ features
def test_feature_cnn_shapes_and_deterministic_training():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) > 0.5).long()
    a = train_feature_net(x, y, steps=5, batch=16, seed=3, num_features=8)
    b = train_feature_net(x, y, steps=5, batch=16, seed=3, num_features=8)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert a(x).shape == (64, 8)
    with pytest.raises(ValueError, match="FeatureCNN expects"):
        a(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="labels"):
        train_feature_net(x, y[:10], steps=1)


def test_compare_suite_on_features():
    net = FeatureCNN(1, 8, 10, 16).eval()
    a = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    b = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    same = compare(a, b, net)
    far = compare(a, (b * 0.3), net)
    assert set(same) >= {"fd", "kd", "emd", "mmd2", "nn1", "mmd_bandwidth", "n_real", "n_fake"}
    for k in ("fd", "emd", "mmd2"):
        assert far[k] > same[k], k
    assert abs(same["nn1"] - 0.5) < 0.1 and far["nn1"] > 0.9


def test_inception_fid_needs_local_weights(tmp_path):
    from dgmkd.metrics import inception_fid

    imgs = torch.rand(4, 3, 8, 8)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        inception_fid(imgs, imgs, tmp_path / "missing.pth")
    (tmp_path / "w.pth").write_bytes(b"x")
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="torch-fidelity"):
            inception_fid(imgs, imgs, tmp_path / "w.pth")


def test_a_corrupt_feature_net_cache_is_retrained(tmp_path, capsys, monkeypatch):
    """A cache file of random bytes is reported and replaced by a freshly trained network (here with
    a few steps), which the next call then loads instead of training again."""
    import os

    from dgmkd import feature_net

    real, calls = feature_net.train_feature_net, []

    def short(x, y, **kw):
        calls.append(tuple(x.shape))
        return real(x, y, **{**kw, "steps": 3})

    monkeypatch.setattr(feature_net, "train_feature_net", short)
    path = tmp_path / f"digits_cnn_{feature_net._VERSION}.pt"
    path.write_bytes(os.urandom(4096))
    net = feature_net.digits_feature_net(cache=tmp_path)
    assert "ignoring unreadable feature-net cache" in capsys.readouterr().out
    assert calls == [(1438, 1, 8, 8)]  # trained on the digits' training split
    saved = torch.load(path, weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in net.state_dict().items())
    again = feature_net.digits_feature_net(cache=tmp_path)
    assert len(calls) == 1 and "ignoring" not in capsys.readouterr().out  # loaded, not retrained
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    assert 0.0 <= feature_net.digits_accuracy(tmp_path) <= 1.0


def test_an_unreadable_feature_net_accuracy_file_reads_as_unknown(tmp_path):
    import os

    from dgmkd import feature_net

    (tmp_path / f"digits_cnn_{feature_net._VERSION}.json").write_bytes(os.urandom(256))
    assert feature_net.digits_accuracy(tmp_path) is None
    (tmp_path / f"digits_cnn_{feature_net._VERSION}.json").write_text('{"test_accuracy": 0.97}')
    assert feature_net.digits_accuracy(tmp_path) == 0.97
