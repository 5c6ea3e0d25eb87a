"""MNIST IDX reader on fixture files written here (plain, gzipped, both naming styles)."""

import gzip
import struct

import numpy as np
import pytest
import torch

from dgmkd.data import DataFormatError
from dgmkd.data.mnist import load_mnist, read_idx, write_idx


def _write_split(root, prefix, n, seed, gz=False, dotted=False):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, size=n, dtype=np.uint8)
    for kind, arr, nd in (("images", x, 3), ("labels", y, 1)):
        name = f"{prefix}-{kind}{'.' if dotted else '-'}idx{nd}-ubyte"
        path = root / name
        write_idx(path, arr)
        if gz:
            path.with_name(name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
            path.unlink()
    return x, y


def test_idx_header_layout_by_hand(tmp_path):
    """The bytes of the format itself: magic 0x00000803, big-endian dims, row-major data."""
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 0x08, 3]) + struct.pack(">3i", 2, 3, 4) + data.tobytes()
    (tmp_path / "f").write_bytes(raw)
    a = read_idx(tmp_path / "f")
    assert a.shape == (2, 3, 4) and a.dtype == np.uint8 and a[1, 2, 3] == 23
    # big-endian multi-byte values
    raw = bytes([0, 0, 0x0C, 1]) + struct.pack(">1i", 2) + struct.pack(">2i", 1, -70000)
    (tmp_path / "g").write_bytes(raw)
    assert read_idx(tmp_path / "g").tolist() == [1, -70000]
    write_idx(tmp_path / "h", data)
    assert (tmp_path / "h").read_bytes() == bytes([0, 0, 0x08, 3]) + struct.pack(">3i", 2, 3, 4) + data.tobytes()


@pytest.mark.parametrize("dt", ["u1", "i1", "i2", "i4", "f4", "f8"])
def test_idx_roundtrip_dtypes(tmp_path, dt):
    a = (np.arange(12) - 3).astype(dt).reshape(3, 4) if dt != "u1" else np.arange(12, dtype=dt).reshape(3, 4)
    write_idx(tmp_path / "a", a)
    b = read_idx(tmp_path / "a")
    assert b.dtype == np.dtype(dt) and np.array_equal(a, b)


@pytest.mark.parametrize("gz,dotted", [(False, False), (True, False), (False, True), (True, True)])
def test_load_mnist_fixture(tmp_path, gz, dotted):
    x, y = _write_split(tmp_path, "train", 7, 0, gz, dotted)
    xt_, yt_ = _write_split(tmp_path, "t10k", 3, 1, gz, dotted)
    xt, yt = load_mnist(tmp_path, "train")
    assert xt.shape == (7, 1, 28, 28) and xt.dtype == torch.float32 and yt.dtype == torch.int64
    assert yt.tolist() == y.tolist()
    assert float(xt[4, 0, 27, 3]) == pytest.approx(x[4, 27, 3] / 255.0)
    assert float(xt.max()) <= 1.0 and float(xt.min()) >= 0.0
    xe, ye = load_mnist(tmp_path, "test")
    assert xe.shape == (3, 1, 28, 28) and ye.tolist() == yt_.tolist()
    assert load_mnist(tmp_path, "train", limit=2)[0].shape[0] == 2


def test_mnist_errors(tmp_path):
    with pytest.raises(DataFormatError, match="not found"):
        load_mnist(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, "val")
    _write_split(tmp_path, "train", 4, 0)
    # truncated image file
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(DataFormatError, match="data bytes"):
        load_mnist(tmp_path, "train")
    # not an IDX file at all
    p.write_bytes(b"\x89PNG....")
    with pytest.raises(DataFormatError, match="not an IDX"):
        read_idx(p)
    # unknown type byte
    p.write_bytes(bytes([0, 0, 0x07, 1]) + struct.pack(">i", 0))
    with pytest.raises(DataFormatError, match="type byte"):
        read_idx(p)
    # images and labels disagree in count
    write_idx(p, np.zeros((5, 28, 28), np.uint8))
    with pytest.raises(DataFormatError, match="5 images but 4 labels"):
        load_mnist(tmp_path, "train")
    # a damaged gzip
    (tmp_path / "bad").write_bytes(b"\x1f\x8b" + b"\x00" * 10)
    with pytest.raises(DataFormatError, match="gzip"):
        read_idx(tmp_path / "bad")


def test_pad_to_centres_the_digits(tmp_path):
    x, _ = _write_split(tmp_path, "train", 3, 0)
    xp, _ = load_mnist(tmp_path, "train", pad_to=32)
    assert xp.shape == (3, 1, 32, 32) and float(xp[:, :, :2].abs().sum() + xp[:, :, -2:].abs().sum()) == 0.0
    assert torch.equal(xp[:, 0, 2:30, 2:30], load_mnist(tmp_path, "train")[0][:, 0])
    with pytest.raises(ValueError, match="pad_to"):
        load_mnist(tmp_path, "train", pad_to=20)


@pytest.fixture
def short_feature_net(monkeypatch):
    """The feature network trained on the IDX images, with a handful of steps."""
    from dgmkd import feature_net as F

    train, seen = F.train_feature_net, {}

    def short(x, y, **kw):
        seen["x"] = tuple(x.shape)
        return train(x, y, **{**kw, "steps": 2, "batch": 8})

    monkeypatch.setattr(F, "train_feature_net", short)
    return seen


def _idx_folder(root, n_train=60, n_test=20):
    root.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = np.arange(n, dtype=np.uint8) % 10
        x = np.zeros((n, 28, 28), np.uint8)
        for i, d in enumerate(y):  # a bar whose position and width depend on the digit, plus noise
            x[i, 4:24, 2 + 2 * d:5 + 2 * d + d % 3] = 255
        x = np.clip(x.astype(int) + rng.integers(0, 30, x.shape), 0, 255).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte", x)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", y)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("experiment", ["hvae-compress", "continual"])
def test_experiments_run_on_mnist_idx_files(tmp_path, short_feature_net, experiment):
    """``--set dataset=mnist-idx --set data_root=DIR``: the IDX files, padded to 32x32, back both
    image experiments (tiny fixtures written here); the report rebuilds from the run's files."""
    from dgmkd.cli import main

    _idx_folder(tmp_path / "mnist")
    sets = {"hvae-compress": ["teacher_width=4", "ratios=2", "teacher_steps=3", "warmup=1", "student_steps=2",
                              "encoder_steps=1", "methods=unified,scratch", "seeds=0", "eval_samples=20", "nll_k=2",
                              "batch=8", "grid=2"],
            "continual": ["splits=0-4>5-9", "methods=unified,curl", "width=2", "latent_dims=4,2", "old_steps=2",
                          "warmup=1", "new_steps=2", "batch=8", "grid=2", "val_fraction=0.25"]}[experiment]
    out = tmp_path / "run"
    args = ["run", experiment, "--quick", "--quiet", "--out", str(out), "--set", "dataset=mnist-idx",
            "--set", f"data_root={tmp_path / 'mnist'}"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    n_train = 60 if experiment == "hvae-compress" else 45  # continual: 15 of the 60 are the validation split
    assert short_feature_net["x"] == (n_train, 1, 32, 32)
    assert (out / "feature_cnn.pt").is_file()
    text = (out / "report.md").read_text()
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.md").read_text() == text


# ------------------------------------------------------------------------------------ hostile IDX files
def _gz_zeros(path, head: bytes, zeros: int):
    """A gzip file: ``head`` then ``zeros`` zero bytes, compressed in chunks (a few KB on disk)."""
    import zlib

    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts, block = [c.compress(head)], bytes(1 << 20)
    for i in range(0, zeros, len(block)):
        parts.append(c.compress(block[: min(len(block), zeros - i)]))
    path.write_bytes(b"".join(parts) + c.flush())


def _peak(fn):
    """``(exception raised by fn, peak traced allocation in bytes)``."""
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the caller checks which
        err = e
    else:
        err = None
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return err, peak


def test_gzip_bomb_is_refused_in_bounded_memory(tmp_path):
    """A gzipped file of 64 MB of zeros behind a header claiming 4 bytes: the reader stops after the
    claimed bytes (plus one) instead of decompressing everything first."""
    p = tmp_path / "bomb-idx1-ubyte.gz"
    _gz_zeros(p, bytes([0, 0, 0x08, 1]) + struct.pack(">i", 4), 64 << 20)
    assert p.stat().st_size < 200_000
    err, peak = _peak(lambda: read_idx(p))
    assert isinstance(err, DataFormatError) and "more than 4" in str(err) and str(p) in str(err)
    assert peak < 8 << 20, peak


def test_header_claiming_more_than_the_bound_is_refused_before_reading(tmp_path):
    p = tmp_path / "big-idx3-ubyte.gz"
    _gz_zeros(p, bytes([0, 0, 0x08, 3]) + struct.pack(">3i", 3000, 1000, 1000), 1 << 20)  # claims 3 GB
    err, peak = _peak(lambda: read_idx(p))
    assert isinstance(err, DataFormatError) and "max_bytes" in str(err) and "(3000, 1000, 1000)" in str(err)
    assert peak < 4 << 20, peak
    # the bound is the caller's to raise: a file within it reads
    write_idx(tmp_path / "ok", np.zeros((10, 10), np.uint8))
    with pytest.raises(DataFormatError, match="max_bytes"):
        read_idx(tmp_path / "ok", max_bytes=99)
    assert read_idx(tmp_path / "ok", max_bytes=100).shape == (10, 10)


def test_negative_or_odd_dimensions_name_the_file_and_offset(tmp_path):
    p = tmp_path / "neg"
    p.write_bytes(bytes([0, 0, 0x08, 2]) + struct.pack(">2i", -2, -3) + bytes(6))  # product 6 = the bytes held
    with pytest.raises(DataFormatError, match=r"dimension 0 \(byte offset 4\) is -2"):
        read_idx(p)
    p.write_bytes(bytes([0, 0, 0x08, 3]) + struct.pack(">2i", 2, 3))  # 3 dims declared, 2 present
    with pytest.raises(DataFormatError, match="truncated inside its header"):
        read_idx(p)
    p.write_bytes(b"")
    with pytest.raises(DataFormatError, match="empty file"):
        read_idx(p)


@pytest.mark.parametrize("label", [10, 200, 255])
def test_labels_outside_the_classes_are_refused(tmp_path, label):
    _write_split(tmp_path, "train", 6, 0)
    y = np.arange(6, dtype=np.uint8)
    y[4] = label
    write_idx(tmp_path / "train-labels-idx1-ubyte", y)
    with pytest.raises(DataFormatError, match=rf"label {label} of record 4 is outside 0\.\.9"):
        load_mnist(tmp_path, "train")
    if label < 255:
        assert load_mnist(tmp_path, "train", num_classes=label + 1)[1][4] == label  # e.g. EMNIST's 62 classes


def test_pixels_must_be_finite_and_in_range_and_splits_non_empty(tmp_path):
    _write_split(tmp_path, "train", 3, 0)
    x = np.zeros((3, 28, 28), np.float32)
    x[1, 5, 6] = np.nan
    write_idx(tmp_path / "train-images-idx3-ubyte", x)
    with pytest.raises(DataFormatError, match=r"pixel \(5, 6\) of image 1 is nan"):
        load_mnist(tmp_path, "train")
    x[1, 5, 6] = 300.0
    write_idx(tmp_path / "train-images-idx3-ubyte", x)
    with pytest.raises(DataFormatError, match="in 0..255"):
        load_mnist(tmp_path, "train")
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros((0,), np.uint8))
    with pytest.raises(DataFormatError, match="split is empty"):
        load_mnist(tmp_path, "train")


def test_a_bad_data_file_is_a_clear_cli_error(tmp_path, capsys):
    """``dgmkd run ... --set dataset=mnist-idx`` on labels out of range: exit 2 with the reader's
    message (file, record), no traceback, and the run directory marked failed."""
    import json

    from dgmkd.cli import main

    _idx_folder(tmp_path / "mnist")
    y = np.arange(60, dtype=np.uint8) % 10
    y[7] = 200
    write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte", y)
    out = tmp_path / "run"
    assert main(["run", "hvae-compress", "--quick", "--quiet", "--out", str(out), "--set", "dataset=mnist-idx",
                 "--set", f"data_root={tmp_path / 'mnist'}"]) == 2
    err = capsys.readouterr().err
    assert "train-labels-idx1-ubyte" in err and "label 200 of record 7" in err and "Traceback" not in err
    assert json.loads((out / "status.json").read_text())["status"] == "failed"
