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


def _split_tail(data, frac=0.1):
    n_test = int(frac * data.shape[0])
    test, data = data[-n_test:], data[:-n_test]
    n_val = int(frac * data.shape[0])
    return data[:-n_val], data[-n_val:], test


def load_power(root: str):
    data = np.load(_need(os.path.join(root, "power", "data.npy"))).astype(np.float64)
    if data.ndim != 2 or data.shape[1] != 8:
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
    train, val, test = _split_tail(data)
    both = np.vstack((train, val))
    mu, sd = both.mean(0), both.std(0)
    return _t((train - mu) / sd, (val - mu) / sd, (test - mu) / sd)


def _read_text(path, skip_header=True):
    with open(path) as f:
        first = f.readline()
        if skip_header:
            first = f.readline()
    delim = "," if "," in first else None
    try:
        return np.loadtxt(path, delimiter=delim, skiprows=1 if skip_header else 0, ndmin=2)
    except ValueError as e:
        raise DataFormatError(f"{path}: not a numeric table ({e})") from e


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
    data = (data - data.mean(0)) / data.std(0, ddof=1)
    return _t(*_split_tail(data))


def load_hepmass(root: str):
    d = os.path.join(root, "hepmass")
    tr = _read_text(_need(os.path.join(d, "1000_train.csv")))
    te = _read_text(_need(os.path.join(d, "1000_test.csv")))
    tr = tr[tr[:, 0] == 1][:, 1:]
    te = te[te[:, 0] == 1][:, 1:-1]
    if tr.shape[1] != te.shape[1]:
        raise DataFormatError(f"hepmass: train has {tr.shape[1]} features, test {te.shape[1]} after "
                              "dropping its last column")
    mu, sd = tr.mean(0), tr.std(0, ddof=1)
    tr, te = (tr - mu) / sd, (te - mu) / sd
    drop = [i for i, col in enumerate(tr.T) if Counter(col)[col.min()] > 5]
    keep = [i for i in range(tr.shape[1]) if i not in drop]
    tr, te = tr[:, keep], te[:, keep]
    n_val = int(0.1 * tr.shape[0])
    return _t(tr[:-n_val], tr[-n_val:], te)


def load_miniboone(root: str):
    data = np.load(_need(os.path.join(root, "miniboone", "data.npy"))).astype(np.float64)
    train, val, test = _split_tail(data)
    both = np.vstack((train, val))
    mu, sd = both.mean(0), both.std(0)
    return _t((train - mu) / sd, (val - mu) / sd, (test - mu) / sd)


def load_bsds300(root: str):
    d = os.path.join(root, "BSDS300")
    h5 = os.path.join(d, "BSDS300.hdf5")
    if os.path.isfile(h5):
        try:
            import h5py
        except ImportError:
            h5py = None
        if h5py is not None:
            with h5py.File(h5, "r") as f:
                return _t(f["train"][()], f["validation"][()], f["test"][()])
        if not os.path.isfile(os.path.join(d, "train.npy")):
            raise ImportError("reading BSDS300.hdf5 needs h5py (pip install h5py); or save its three "
                              "datasets as BSDS300/train.npy, validation.npy, test.npy")
    arrays = [np.load(_need(os.path.join(d, f"{s}.npy"))) for s in ("train", "validation", "test")]
    for a in arrays:
        if a.ndim != 2 or a.shape[1] != 63:
            raise DataFormatError(f"BSDS300: expected (N, 63) arrays, got {a.shape}")
    return _t(*arrays)


_LOADERS = {"power": load_power, "gas": load_gas, "hepmass": load_hepmass, "miniboone": load_miniboone,
            "bsds300": load_bsds300}


def load_uci(name: str, root: str):
    """``(train, val, test)`` of a UCI flow benchmark by name (see :data:`NAMES`)."""
    try:
        return _LOADERS[name.lower()](root)
    except KeyError:
        raise ValueError(f"unknown UCI benchmark {name!r}; choose one of {', '.join(NAMES)}") from None
