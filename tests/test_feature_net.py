"""The cached feature networks of the embedded data sets: the 28x28 MNIST one classifies held-out
digits, and the metric suite on its features ranks distributions the way they differ."""

import json

import pytest
import torch

from dgmkd import feature_net
from dgmkd.data import mnist_split
from dgmkd.metrics.features import compare

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mnist_net():
    return feature_net.embedded_feature_net("mnist")  # the shared cache (trained once, ~1 CPU-minute)


def test_mnist_net_is_cached_with_its_held_out_accuracy(mnist_net):
    x, y = mnist_split("test")
    with torch.no_grad():
        acc = float((mnist_net.logits(x).argmax(1) == y).float().mean())
    assert acc > 0.95
    assert feature_accuracy_matches(acc)
    assert mnist_net.image_size == 28 and mnist_net(x[:3]).shape == (3, 64)
    with pytest.raises(ValueError, match="FeatureCNN expects"):
        mnist_net(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="no embedded feature network"):
        feature_net.embedded_feature_net("svhn")


def feature_accuracy_matches(acc):
    info = json.loads((feature_net.cache_dir() / f"mnist_cnn_{feature_net._VERSION}.json").read_text())
    return abs(info["test_accuracy"] - acc) < 1e-6 and feature_net.feature_accuracy("mnist") == info["test_accuracy"] \
        and (info["train_images"], info["test_images"]) == (4000, 1000)


def test_metrics_on_mnist_features_rank_by_distribution_shift(mnist_net):
    """Held-out digits 0-4 against: other real digits 0-4 (same distribution), digits 5-9 (other
    classes), noise. Every distance must grow in that order; 1NN goes from ~0.5 towards 1."""
    xtr, ytr = mnist_split("train")
    xte, yte = mnist_split("test")
    ref = xte[yte < 5][:300]
    same, other = xtr[ytr < 5][:300], xtr[ytr >= 5][:300]
    noise = torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    a, b, c = (compare(ref, s, mnist_net) for s in (same, other, noise))
    for k in ("fd", "emd", "mmd2"):
        assert a[k] < b[k] < c[k], (k, a[k], b[k], c[k])
    assert abs(a["nn1"] - 0.5) < 0.1 and b["nn1"] > 0.9 and c["nn1"] > 0.99
