"""UCI flow-benchmark readers on fixture files written here; offline tabular sets and patches."""

import os

import numpy as np
import pytest
import torch

from dgmkd.data.errors import DataFormatError
from dgmkd.data.patches import load_patches
from dgmkd.data.tabular import load_tabular
from dgmkd.data.uci import load_uci


def test_power(tmp_path):
    os.makedirs(tmp_path / "power")
    raw = np.random.default_rng(0).normal(size=(200, 8)) * 3 + 5
    np.save(tmp_path / "power" / "data.npy", raw)
    tr, va, te = load_uci("power", str(tmp_path))
    assert (tr.shape, va.shape, te.shape) == ((162, 6), (18, 6), (20, 6))
    both = torch.cat([tr, va]).double()
    torch.testing.assert_close(both.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-5, rtol=0)
    # the same RandomState(42) shuffle as MAF: the test rows are the shuffled tail
    d = raw.copy()
    np.random.RandomState(42).shuffle(d)
    assert np.allclose(np.sort(d[-20:, 0]), np.sort(raw[np.isin(raw[:, 0], d[-20:, 0]), 0]))
    with pytest.raises(DataFormatError):
        np.save(tmp_path / "power" / "data.npy", raw[:, :5])
        load_uci("power", str(tmp_path))


def test_gas_drops_correlated_columns(tmp_path):
    os.makedirs(tmp_path / "gas")
    rng = np.random.default_rng(0)
    sensors = rng.normal(size=(300, 16))
    sensors[:, 5] = sensors[:, 4] * 2 + 1e-4 * rng.normal(size=300)  # a near-duplicate column
    data = np.hstack([rng.normal(size=(300, 3)), sensors])
    with open(tmp_path / "gas" / "ethylene_CO.txt", "w") as f:
        f.write("Time (seconds), CO conc (ppm), Ethylene conc (ppm), sensors\n")
        np.savetxt(f, data)
    tr, va, te = load_uci("gas", str(tmp_path))
    assert tr.shape[1] == 15 and len(te) == 30 and len(va) == 27 and len(tr) == 243
    (tmp_path / "gas" / "ethylene_CO.txt").unlink()
    (tmp_path / "gas" / "ethylene_CO.pickle").write_bytes(b"not read")
    with pytest.raises(DataFormatError, match="pickle"):
        load_uci("gas", str(tmp_path))


def test_hepmass(tmp_path):
    os.makedirs(tmp_path / "hepmass")
    rng = np.random.default_rng(0)

    def write(name, n, extra):
        lab = (np.arange(n) % 2).astype(float)[:, None]
        feats = rng.normal(size=(n, 4))
        feats[:, 2] = np.where(rng.random(n) < 0.5, -9.0, rng.normal(size=n))  # a feature with a repeated minimum
        cols = [lab, feats] + ([rng.normal(size=(n, 1))] if extra else [])
        header = ",".join(["# label"] + [f"f{i}" for i in range(4 + extra)])
        np.savetxt(tmp_path / "hepmass" / name, np.hstack(cols), delimiter=",", header=header, comments="")

    write("1000_train.csv", 100, 0)
    write("1000_test.csv", 40, 1)
    tr, va, te = load_uci("hepmass", str(tmp_path))
    assert tr.shape == (45, 3) and va.shape == (5, 3) and te.shape == (20, 3)


def test_miniboone_and_bsds300_npy(tmp_path):
    os.makedirs(tmp_path / "miniboone")
    os.makedirs(tmp_path / "BSDS300")
    np.save(tmp_path / "miniboone" / "data.npy", np.random.default_rng(0).normal(size=(100, 43)))
    tr, va, te = load_uci("miniboone", str(tmp_path))
    assert (len(tr), len(va), len(te)) == (81, 9, 10) and tr.shape[1] == 43
    for s, n in (("train", 30), ("validation", 5), ("test", 7)):
        np.save(tmp_path / "BSDS300" / f"{s}.npy", np.full((n, 63), 0.5))
    tr, va, te = load_uci("bsds300", str(tmp_path))
    assert (tr.shape, va.shape, te.shape) == ((30, 63), (5, 63), (7, 63))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_uci("power", str(tmp_path))
    with pytest.raises(ValueError):
        load_uci("cifar", str(tmp_path))


def test_offline_tabular_sets():
    for name, d, n in (("faithful", 2, 272), ("wine", 13, 178), ("breast_cancer", 30, 569)):
        tr, va, te = load_tabular(name)
        assert tr.shape[1] == d and len(tr) + len(va) + len(te) == n
        torch.testing.assert_close(tr.double().mean(0), torch.zeros(d, dtype=torch.float64), atol=1e-5, rtol=0)


def test_patches_protocol():
    tr, va, te = load_patches(n_train=200, n_val=20, n_test=50, seed=3)
    assert tr.shape == (200, 63) and te.shape == (50, 63)
    # the full 64-pixel patch has zero mean: the dropped pixel is minus the sum of the others
    last = -tr.double().sum(1)
    assert float(last.abs().max()) < 1.0
    assert float(tr.abs().max()) <= 1.0
    tr2, _, _ = load_patches(n_train=200, n_val=20, n_test=50, seed=3)
    assert torch.equal(tr, tr2)


# ------------------------------------------------------------------------------------ hostile files
def test_too_few_rows_for_the_splits_is_an_error_naming_file_and_counts(tmp_path):
    os.makedirs(tmp_path / "miniboone")
    path = tmp_path / "miniboone" / "data.npy"
    np.save(path, np.random.default_rng(0).normal(size=(8, 5)))  # 10 % of 8 rows is 0
    with pytest.raises(DataFormatError, match=r"data.npy: 8 rows give 8 train, 0 validation and 0 test"):
        load_uci("miniboone", str(tmp_path))
    np.save(path, np.random.default_rng(0).normal(size=(11, 5)))  # the smallest that splits
    assert [len(a) for a in load_uci("miniboone", str(tmp_path))] == [9, 1, 1]


def test_nan_inf_and_constant_columns_are_refused(tmp_path):
    os.makedirs(tmp_path / "miniboone")
    path = tmp_path / "miniboone" / "data.npy"
    data = np.random.default_rng(0).normal(size=(40, 5))
    data[17, 3] = np.nan
    np.save(path, data)
    with pytest.raises(DataFormatError, match="row 17, column 3 is nan"):
        load_uci("miniboone", str(tmp_path))
    data[17, 3], data[:, 2] = 0.0, 4.0
    np.save(path, data)
    with pytest.raises(DataFormatError, match="column 2 has no spread"):
        load_uci("miniboone", str(tmp_path))


def test_binary_pickled_or_non_numeric_files_are_data_format_errors(tmp_path):
    os.makedirs(tmp_path / "gas")
    os.makedirs(tmp_path / "miniboone")
    gas = tmp_path / "gas" / "ethylene_CO.txt"
    rows = "\n".join(" ".join(str(v) for v in r) for r in np.random.default_rng(0).normal(size=(30, 19)))
    gas.write_bytes(b"header\n" + rows.encode() + b"\n\x00\xff\xfe binary\n")
    with pytest.raises(DataFormatError, match=r"ethylene_CO.txt line 32 \(byte offset \d+\): not a text table"):
        load_uci("gas", str(tmp_path))
    lines = ("header\n" + rows + "\n").splitlines()
    lines[5] = " ".join(["1"] * 10 + ["inf"] + ["1"] * 8)
    gas.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match="line 6, column 10 is inf"):
        load_uci("gas", str(tmp_path))
    np.save(tmp_path / "miniboone" / "data.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataFormatError, match="data.npy: not a NumPy .npy array file"):
        load_uci("miniboone", str(tmp_path))
    (tmp_path / "miniboone" / "data.npy").write_bytes(os.urandom(300))
    with pytest.raises(DataFormatError, match="data.npy"):
        load_uci("miniboone", str(tmp_path))


def test_npy_header_claiming_more_than_the_file_holds_is_refused(tmp_path):
    os.makedirs(tmp_path / "miniboone")
    path = tmp_path / "miniboone" / "data.npy"
    np.save(path, np.zeros((20, 4)))
    raw = path.read_bytes()
    assert b"(20, 4)" in raw[:128]
    path.write_bytes(raw.replace(b"(20, 4)", b"(90, 4)", 1))  # same header length, 70 rows missing
    with pytest.raises(DataFormatError, match="data.npy: not a NumPy .npy array file"):
        load_uci("miniboone", str(tmp_path))


def test_hepmass_without_enough_signal_rows(tmp_path):
    os.makedirs(tmp_path / "hepmass")
    for name, n in (("1000_train.csv", 6), ("1000_test.csv", 4)):
        data = np.hstack([np.ones((n, 1)), np.random.default_rng(n).normal(size=(n, 3))])
        np.savetxt(tmp_path / "hepmass" / name, data, delimiter=",", header="a,b,c,d", comments="")
    with pytest.raises(DataFormatError, match="6 train, 0 validation"):
        load_uci("hepmass", str(tmp_path))
