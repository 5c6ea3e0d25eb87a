"""Readers for the standard UCI flow benchmarks, preprocessed as in the MAF repository
(Papamakarios et al. 2017, ``github.com/gpapamak/maf``, ``datasets/``), from files the user
brings. Nothing downloads. Each reader returns ``(train, val, test)`` float32 tensors.

Expected layout under ``root`` (the MAF repository's data folder):

``power/data.npy``
    the household power consumption array; columns 1 and 3 are dropped, uniform noise added
    (``gap 0.001, voltage 0.01, sub-metering 1``), shuffled with ``RandomState(42)``, split 10 %
    test / 10 % of the rest validation, standardized with train+validation statistics -> 6-d.
``gas/ethylene_CO.txt`` (or ``.csv``)
    the UCI "gas sensor array under dynamic gas mixtures" file (the MAF repository ships it as a
    pandas pickle, which is not read here: never unpickle files; export it to text). The first
    three columns (time, CO, ethylene) are dropped; columns correlated above 0.98 with another
    are removed greedily as in MAF; standardized; split 10 % test / 10 % validation -> 8-d.
``hepmass/1000_train.csv``, ``hepmass/1000_test.csv``
    rows with label 1 only, label column dropped (and the test file's last column, as MAF does),
    standardized with the train statistics; features whose smallest value occurs more than 5 times
    are removed (MAF's rule, which drops the discrete mass-like features); the last 10 % of train
    is validation -> 21-d.
``miniboone/data.npy``
    split 10 % test / 10 % validation (in file order), standardized with train+validation -> 43-d.
``BSDS300/BSDS300.hdf5``
    datasets ``train``, ``validation``, ``test`` (needs ``h5py``); or, without h5py, the three
    arrays as ``BSDS300/train.npy``, ``validation.npy``, ``test.npy`` -> 63-d.

Example:
    >>> import numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp(); os.makedirs(f"{d}/miniboone")
    >>> np.save(f"{d}/miniboone/data.npy", np.random.default_rng(0).normal(size=(100, 5)))
    >>> [tuple(a.shape) for a in load_uci("miniboone", d)]
    [(81, 5), (9, 5), (10, 5)]
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import torch

from .errors import DataFormatError

__all__ = ["load_uci", "load_power", "load_gas", "load_hepmass", "load_miniboone", "load_bsds300", "NAMES"]

NAMES = ("power", "gas", "hepmass", "miniboone", "bsds300")


def _t(*arrays):
    return tuple(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in arrays)


def _need(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found; UCI flow benchmarks are read from local files "
                                "(see dgmkd.data.uci for the layout); nothing is downloaded")
    return path


def _finite(path, data, first_row=0, what="row"):
    """``data`` unless it holds NaN or inf: then a :class:`DataFormatError` naming the first such
    entry (``what`` ``first_row + i``, column)."""
    bad = ~np.isfinite(data)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise DataFormatError(f"{path}: {what} {first_row + i}, column {j} is {float(data[i, j])}; the data must be "
                              f"finite ({int(bad.sum())} such entries)")
    return data


def _load_npy(path, ndim=2):
    """A numeric ``.npy`` array as float64. The header is read first (memory-mapped), so a file whose
    header claims more than it holds is refused before anything is allocated; pickles are never
    loaded."""
    _need(path)
    try:
        m = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise DataFormatError(f"{path}: not a NumPy .npy array file ({type(e).__name__}: {e})") from None
    if not isinstance(m, np.ndarray) or m.dtype.kind not in "biuf":
        raise DataFormatError(f"{path}: expected a numeric array, got {getattr(m, 'dtype', type(m).__name__)}")
    if m.ndim != ndim:
        raise DataFormatError(f"{path}: expected a {ndim}-d array, got shape {m.shape}")
    return _finite(path, np.array(m, dtype=np.float64))


def _split_tail(data, frac=0.1, path=""):
    """MAF's split: the last ``frac`` of the rows test, then the last ``frac`` of the rest validation;
    a split that would be empty is a :class:`DataFormatError` naming the file and the counts."""
    n = data.shape[0]
    n_test = int(frac * n)
    n_val = int(frac * (n - n_test))
    _counts(path, n, n - n_test - n_val, n_val, n_test)
    test, data = data[-n_test:], data[:-n_test]
    return data[:-n_val], data[-n_val:], test


def _counts(path, n, n_train, n_val, n_test):
    if min(n_train, n_val, n_test) < 1:
        raise DataFormatError(f"{path}: {n} rows give {n_train} train, {n_val} validation and {n_test} test rows; "
                              "every split needs at least one row (MAF's 10 % splits need at least 11 rows, and "
                              "the standardization at least 2 training rows)")


def _standardize(path, fit, *arrays, ddof=0):
    """``arrays`` standardized by ``fit``'s column means and standard deviations; a column without
    spread is a :class:`DataFormatError` (it would turn into NaN or inf)."""
    mu, sd = fit.mean(0), fit.std(0, ddof=ddof)
    flat = np.flatnonzero(~(sd > 0) | ~np.isfinite(sd))
    if len(flat):
        raise DataFormatError(f"{path}: column {flat[0]} has no spread over the {len(fit)} rows it is standardized "
                              f"with ({len(flat)} such columns); cannot standardize")
    return tuple((a - mu) / sd for a in arrays)


def load_power(root: str):
    path = os.path.join(root, "power", "data.npy")
    data = _load_npy(path)
    if data.shape[1] != 8:
        raise DataFormatError(f"power/data.npy: expected an (N, 8) array, got {data.shape}")
    rng = np.random.RandomState(42)
    rng.shuffle(data)
    n = data.shape[0]
    data = np.delete(data, 3, axis=1)
    data = np.delete(data, 1, axis=1)
    voltage_noise = 0.01 * rng.rand(n, 1)
    gap_noise = 0.001 * rng.rand(n, 1)
    sm_noise = rng.rand(n, 3)
    time_noise = np.zeros((n, 1))
    data = data + np.hstack((gap_noise, voltage_noise, sm_noise, time_noise))
    train, val, test = _split_tail(data, path=path)
    return _t(*_standardize(path, np.vstack((train, val)), train, val, test))


def _read_text(path, skip_header=True):
    """A numeric table (comma- or whitespace-separated, one header line skipped) as float64; bytes
    that are not text, fields that are not numbers and NaN/inf are errors naming the line."""
    import io

    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataFormatError(f"{path} line {line} (byte offset {e.start}): not a text table ({e.reason})") from None
    lines = text.splitlines()
    first = lines[1 if skip_header else 0] if len(lines) > int(skip_header) else ""
    delim = "," if "," in first else None
    try:
        data = np.loadtxt(io.StringIO(text), delimiter=delim, skiprows=1 if skip_header else 0, ndmin=2)
    except ValueError as e:
        raise DataFormatError(f"{path}: not a numeric table ({e}; rows are counted from 1, the header line is "
                              f"{'row 1' if skip_header else 'absent'})") from None
    if data.size == 0:
        raise DataFormatError(f"{path}: no data rows")
    return _finite(path, data, first_row=2 if skip_header else 1, what="line")


def load_gas(root: str):
    d = os.path.join(root, "gas")
    for name in ("ethylene_CO.txt", "ethylene_CO.csv"):
        if os.path.isfile(os.path.join(d, name)):
            path = os.path.join(d, name)
            break
    else:
        if os.path.isfile(os.path.join(d, "ethylene_CO.pickle")):
            raise DataFormatError("gas/ethylene_CO.pickle is a pandas pickle, which dgmkd does not unpickle; "
                                  "export it as text (ethylene_CO.txt) or use the UCI original")
        _need(os.path.join(d, "ethylene_CO.txt"))
    data = _read_text(path)
    if data.shape[1] != 19:
        raise DataFormatError(f"{path}: expected 19 columns (time, CO, ethylene, 16 sensors), got {data.shape[1]}")
    data = data[:, 3:]
    while True:
        c = np.corrcoef(data, rowvar=False)
        b = (c > 0.98).sum(1)
        if not np.any(b > 1):
            break
        data = np.delete(data, np.where(b > 1)[0][0], axis=1)
    if data.shape[0] < 2:
        _counts(path, data.shape[0], data.shape[0], 0, 0)
    data, = _standardize(path, data, data, ddof=1)
    return _t(*_split_tail(data, path=path))


def load_hepmass(root: str):
    d = os.path.join(root, "hepmass")
    ptr, pte = _need(os.path.join(d, "1000_train.csv")), _need(os.path.join(d, "1000_test.csv"))
    tr, te = _read_text(ptr), _read_text(pte)
    tr = tr[tr[:, 0] == 1][:, 1:]
    te = te[te[:, 0] == 1][:, 1:-1]
    n_val = int(0.1 * tr.shape[0])
    _counts(f"{ptr} and {pte} (rows with label 1)", len(tr) + len(te), len(tr) - n_val, n_val, len(te))
    if tr.shape[1] != te.shape[1]:
        raise DataFormatError(f"hepmass: train has {tr.shape[1]} features, test {te.shape[1]} after "
                              "dropping its last column")
    tr, te = _standardize(ptr, tr, tr, te, ddof=1)
    drop = [i for i, col in enumerate(tr.T) if Counter(col)[col.min()] > 5]
    keep = [i for i in range(tr.shape[1]) if i not in drop]
    tr, te = tr[:, keep], te[:, keep]
    return _t(tr[:-n_val], tr[-n_val:], te)


def load_miniboone(root: str):
    path = os.path.join(root, "miniboone", "data.npy")
    train, val, test = _split_tail(_load_npy(path), path=path)
    return _t(*_standardize(path, np.vstack((train, val)), train, val, test))


def load_bsds300(root: str):
    d = os.path.join(root, "BSDS300")
    h5 = os.path.join(d, "BSDS300.hdf5")
    if os.path.isfile(h5):
        try:
            import h5py
        except ImportError:
            h5py = None
        if h5py is not None:
            try:
                with h5py.File(h5, "r") as f:
                    arrays = [f[k] for k in ("train", "validation", "test")]
                    for k, a in zip(("train", "validation", "test"), arrays):
                        if a.ndim != 2 or a.shape[1] != 63 or a.shape[0] < 1 or a.dtype.kind not in "biuf":
                            raise DataFormatError(f"{h5}: dataset {k!r} must be a non-empty numeric (N, 63) "
                                                  f"array, got {a.shape} {a.dtype}")
                    return _t(*(_finite(f"{h5} dataset {k!r}", np.asarray(a[()], dtype=np.float64))
                                for k, a in zip(("train", "validation", "test"), arrays)))
            except (OSError, KeyError) as e:
                raise DataFormatError(f"{h5}: not the BSDS300 HDF5 file (datasets train, validation, test): "
                                      f"{e}") from None
        if not os.path.isfile(os.path.join(d, "train.npy")):
            raise ImportError("reading BSDS300.hdf5 needs h5py (pip install h5py); or save its three "
                              "datasets as BSDS300/train.npy, validation.npy, test.npy")
    paths = [os.path.join(d, f"{s}.npy") for s in ("train", "validation", "test")]
    arrays = [_load_npy(p) for p in paths]
    for p, a in zip(paths, arrays):
        if a.shape[1] != 63 or a.shape[0] < 1:
            raise DataFormatError(f"{p}: expected a non-empty (N, 63) array, got {a.shape}")
    return _t(*arrays)


_LOADERS = {"power": load_power, "gas": load_gas, "hepmass": load_hepmass, "miniboone": load_miniboone,
            "bsds300": load_bsds300}


def load_uci(name: str, root: str):
    """``(train, val, test)`` of a UCI flow benchmark by name (see :data:`NAMES`)."""
    try:
        return _LOADERS[name.lower()](root)
    except KeyError:
        raise ValueError(f"unknown UCI benchmark {name!r}; choose one of {', '.join(NAMES)}") from None
