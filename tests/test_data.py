"""Data loaders: the embedded digits and the readers for SVHN (.mat), CIFAR-10 (binary batches) and
CelebA (folder + attribute list), each on tiny fixture files written here."""

import numpy as np
import pytest
import torch

from dgmkd.data import DataFormatError, digits_split, load_celeba, load_cifar10, load_images, load_svhn
from dgmkd.data.cifar import read_cifar_bin
from dgmkd.data.svhn import read_svhn_mat
from datafiles import NAMES, write_celeba

pytestmark = pytest.mark.usefixtures("one_thread")



# ------------------------------------------------------------------------------------ digits
def test_digits_split_is_fixed_disjoint_and_scaled():
    xtr, ytr = digits_split("train")
    xte, yte = digits_split("test")
    assert xtr.shape == (1438, 1, 8, 8) and xte.shape == (359, 1, 8, 8)
    assert xtr.dtype == torch.float32 and float(xtr.min()) == 0.0 and float(xtr.max()) == 1.0
    # values are the 17 grey levels k/16
    assert torch.allclose(xtr * 16, (xtr * 16).round())
    assert torch.equal(digits_split("train")[0], xtr)  # deterministic
    # disjoint: no test image appears among the training images with the same label... compare rows
    a = {tuple(r) for r in xtr.flatten(1).tolist()}
    overlap = sum(tuple(r) in a for r in xte.flatten(1).tolist())
    assert overlap <= 2  # the raw data set has a few exact duplicates, not a shared split
    assert set(ytr.tolist()) == set(range(10))
    xb, _ = digits_split("train", binarize=True)
    assert set(xb.unique().tolist()) == {0.0, 1.0}
    with pytest.raises(ValueError, match="split"):
        digits_split("val")
    assert torch.equal(load_images("digits", split="test"), xte)


# ------------------------------------------------------------------------------------ SVHN
def write_svhn(path, n=5, seed=0, **override):
    import scipy.io

    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).reshape(-1, 1).astype(np.uint8)  # 1..10, 10 means digit 0
    d = {"X": X, "y": y}
    d.update(override)
    scipy.io.savemat(str(path), {k: v for k, v in d.items() if v is not None})
    return X, y


def test_svhn_reader_layout_and_labels(tmp_path):
    X, y = write_svhn(tmp_path / "train_32x32.mat", n=12)
    x, labels = load_svhn(tmp_path, "train")
    assert x.shape == (12, 3, 32, 32) and x.dtype == torch.float32
    # pixel (row 3, col 7, channel 2) of image 5
    assert float(x[5, 2, 3, 7]) == pytest.approx(X[3, 7, 2, 5] / 255.0)
    assert labels.tolist() == [(k % 10 + 1) % 10 for k in range(12)]  # 10 -> 0
    assert load_svhn(tmp_path, "train", limit=4)[0].shape[0] == 4


def test_svhn_reader_rejects_malformed_files(tmp_path):
    write_svhn(tmp_path / "a.mat", y=None)
    with pytest.raises(DataFormatError, match="'X' and 'y'"):
        read_svhn_mat(tmp_path / "a.mat")
    write_svhn(tmp_path / "b.mat", X=np.zeros((32, 32, 5), np.uint8))
    with pytest.raises(DataFormatError, match="shape"):
        read_svhn_mat(tmp_path / "b.mat")
    write_svhn(tmp_path / "c.mat", n=5, y=np.ones((4, 1), np.uint8))
    with pytest.raises(DataFormatError, match="5 images but 4 labels"):
        read_svhn_mat(tmp_path / "c.mat")
    (tmp_path / "d.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(DataFormatError):
        read_svhn_mat(tmp_path / "d.mat")
    with pytest.raises(DataFormatError, match="not found"):
        load_svhn(tmp_path, "test")
    with pytest.raises(ValueError, match="split"):
        load_svhn(tmp_path, "valid")


# ------------------------------------------------------------------------------------ CIFAR-10
def cifar_records(n, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    pixels = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    raw = np.concatenate([labels[:, None], pixels.reshape(n, -1)], axis=1)
    return raw.tobytes(), labels, pixels


def test_cifar_binary_reader_record_layout(tmp_path):
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    expect = []
    for i in range(1, 6):
        raw, labels, pixels = cifar_records(3, seed=i)
        (d / f"data_batch_{i}.bin").write_bytes(raw)
        expect.append((labels, pixels))
    raw, tl, tp = cifar_records(4, seed=9)
    (d / "test_batch.bin").write_bytes(raw)
    x, y = load_cifar10(tmp_path, "train")  # the parent folder works too
    assert x.shape == (15, 3, 32, 32)
    assert y.tolist() == np.concatenate([e[0] for e in expect]).tolist()
    # record 1 of batch 2: red plane first, row-major
    assert float(x[4, 0, 2, 5]) == pytest.approx(expect[1][1][1, 0, 2, 5] / 255.0)
    assert float(x[4, 2, 31, 0]) == pytest.approx(expect[1][1][1, 2, 31, 0] / 255.0)
    xt, yt = load_cifar10(d, "test")
    assert xt.shape == (4, 3, 32, 32) and yt.tolist() == tl.tolist()
    assert load_cifar10(d, "train", limit=5)[0].shape[0] == 5


def test_cifar_reader_rejects_malformed_files(tmp_path):
    raw, _, _ = cifar_records(2)
    (tmp_path / "short.bin").write_bytes(raw[:-7])
    with pytest.raises(DataFormatError, match="multiple of the CIFAR-10 record size"):
        read_cifar_bin(tmp_path / "short.bin")
    bad = bytearray(raw)
    bad[0] = 200
    (tmp_path / "label.bin").write_bytes(bytes(bad))
    with pytest.raises(DataFormatError, match="label byte"):
        read_cifar_bin(tmp_path / "label.bin")
    with pytest.raises(DataFormatError, match="not found"):
        load_cifar10(tmp_path, "test")


# ------------------------------------------------------------------------------------ CelebA
def test_celeba_reader(tmp_path):
    write_celeba(tmp_path)
    x, a, names = load_celeba(tmp_path, "train", size=16)
    assert names == NAMES and x.shape == (2, 3, 16, 16) and a.shape == (2, 3)
    assert a.tolist() == [[0, 1, 0], [1, 0, 1]]
    assert float(x[1, 0].mean()) == pytest.approx(40 / 255, abs=1e-3)  # red plane of image 2
    # the centre crop keeps the green left/right split at the middle column
    assert float(x[0, 1, :, :6].mean()) == pytest.approx(1.0, abs=1e-3) and float(x[0, 1, :, 10:].mean()) < 0.01
    xt, _, _ = load_celeba(tmp_path, "test", size=16)
    assert xt.shape[0] == 1
    assert load_celeba(tmp_path, "all", size=8)[0].shape == (3, 3, 8, 8)


def test_celeba_reader_rejects_malformed_files(tmp_path):
    write_celeba(tmp_path / "a", rows=["000001.png 1 -1", "000002.png 1 -1 1", "000003.png 1 1 1"])
    with pytest.raises(DataFormatError, match="line 3"):
        load_celeba(tmp_path / "a", "all")
    write_celeba(tmp_path / "b", rows=["000001.png 1 0 1", "000002.png 1 -1 1", "000003.png 1 1 1"])
    with pytest.raises(DataFormatError, match="-1 or 1"):
        load_celeba(tmp_path / "b", "all")
    write_celeba(tmp_path / "c", partition=None)
    with pytest.raises(DataFormatError, match="list_eval_partition"):
        load_celeba(tmp_path / "c", "train")
    (tmp_path / "c" / "list_attr_celeba.txt").write_text("5\n" + " ".join(NAMES) + "\n000001.png 1 1 1\n")
    with pytest.raises(DataFormatError, match="header says 5"):
        load_celeba(tmp_path / "c", "all")
    write_celeba(tmp_path / "d", partition=None)
    (tmp_path / "d" / "img_align_celeba" / "000002.png").write_bytes(b"garbage")
    with pytest.raises(DataFormatError, match="cannot read"):
        load_celeba(tmp_path / "d", "all")


# ------------------------------------------------------------------------------------ hostile files
def test_svhn_damaged_empty_or_mislabelled_files_are_data_format_errors(tmp_path):
    (tmp_path / "empty.mat").write_bytes(b"")
    with pytest.raises(DataFormatError, match="empty.mat.*MatReadError"):
        read_svhn_mat(tmp_path / "empty.mat")
    write_svhn(tmp_path / "none.mat", n=0)
    with pytest.raises(DataFormatError, match="holds no images"):
        read_svhn_mat(tmp_path / "none.mat")
    write_svhn(tmp_path / "lab.mat", n=4, y=np.array([[1], [2], [0], [11]], np.uint8))
    with pytest.raises(DataFormatError, match="label 0 of image 2 is not"):
        read_svhn_mat(tmp_path / "lab.mat")
    write_svhn(tmp_path / "nan.mat", n=2, y=np.array([[1.0], [np.nan]]))
    with pytest.raises(DataFormatError, match="image 1"):
        read_svhn_mat(tmp_path / "nan.mat")


def test_svhn_declared_size_is_checked_before_loading(tmp_path):
    write_svhn(tmp_path / "a.mat", n=3)
    with pytest.raises(DataFormatError, match=r"X \(32, 32, 3, 3\).*max_bytes"):
        read_svhn_mat(tmp_path / "a.mat", max_bytes=32 * 32 * 3 * 3 - 1)
    assert read_svhn_mat(tmp_path / "a.mat", max_bytes=32 * 32 * 3 * 3)[0].shape == (3, 3, 32, 32)


def test_cifar_bad_label_names_the_record_and_offset(tmp_path):
    raw, _, _ = cifar_records(3)
    bad = bytearray(raw)
    bad[2 * 3073] = 10
    (tmp_path / "b.bin").write_bytes(bytes(bad))
    with pytest.raises(DataFormatError, match=r"label byte 10 of record 2 \(byte offset 6146\)"):
        read_cifar_bin(tmp_path / "b.bin")


def test_celeba_image_dimensions_are_checked_before_decoding(tmp_path):
    """A PNG of a few KB whose header says 5000 x 5000 is refused from the header (decoding it
    to RGB would take 75 MB); the bound is the caller's to raise."""
    from PIL import Image

    write_celeba(tmp_path, n=2, partition=None, shape=(20, 20))
    big = tmp_path / "img_align_celeba" / "000002.png"
    Image.new("1", (5000, 5000)).save(big)
    assert big.stat().st_size < 100_000
    with pytest.raises(DataFormatError, match=r"000002.png.*5000x5000.*max_pixels"):
        load_celeba(tmp_path, "all", size=8)
    assert load_celeba(tmp_path, "all", size=8, max_pixels=5000 * 5000)[0].shape == (2, 3, 8, 8)


def test_celeba_binary_text_files_and_empty_splits(tmp_path):
    write_celeba(tmp_path / "a")
    attr = tmp_path / "a" / "list_attr_celeba.txt"
    attr.write_bytes(attr.read_bytes()[:40] + b"\xff\xfe\x00" + attr.read_bytes()[40:])
    with pytest.raises(DataFormatError, match=r"list_attr_celeba.txt' line 3 \(byte offset 40\): not text"):
        load_celeba(tmp_path / "a", "all")
    write_celeba(tmp_path / "b")
    (tmp_path / "b" / "list_eval_partition.txt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(DataFormatError, match="list_eval_partition.txt' line 1"):
        load_celeba(tmp_path / "b", "train")
    write_celeba(tmp_path / "c", partition=(0, 0, 0))
    with pytest.raises(DataFormatError, match="split 'test'.*holds no image"):
        load_celeba(tmp_path / "c", "test")
    # blank lines do not shift the line numbers of later errors
    write_celeba(tmp_path / "d", rows=["000001.png 1 1 1", "", "000002.png 1 1 1", "000003.png 1 1"])
    with pytest.raises(DataFormatError, match="line 6: expected a file name"):
        load_celeba(tmp_path / "d", "all")
