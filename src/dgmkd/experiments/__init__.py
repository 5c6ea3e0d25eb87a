"""Reproduced experiments, one module each, run with ``dgmkd run NAME``.

Each module defines a ``Config`` dataclass (its defaults), a ``QUICK`` dict of overrides for the
small ``--quick`` form, a one-line ``DESCRIPTION`` and ``run(cfg, out_dir) -> dict``. Results
(CSV, PNG, ``report.md``) are written to ``out_dir`` by the code; nothing is typed by hand.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# name -> module; modules are imported only when used so `dgmkd list` stays fast
EXPERIMENTS: dict[str, str] = {
    "demo": "dgmkd.experiments.demo",
    "hm-compress": "dgmkd.experiments.hm_compress",
    "vrnn-compress": "dgmkd.experiments.vrnn_compress",
    "hvae-compress": "dgmkd.experiments.hvae_compress",
    "toy-chain": "dgmkd.experiments.toy_chain",
    "density-distill": "dgmkd.experiments.density_distill",
    "flow-kd": "dgmkd.experiments.flow_kd",
    "avkd": "dgmkd.experiments.avkd",
    "continual": "dgmkd.experiments.continual",
}


def get(name: str) -> ModuleType:
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown experiment {name!r}; available: {', '.join(sorted(EXPERIMENTS))} "
                       "(see `dgmkd list`)")
    return importlib.import_module(EXPERIMENTS[name])


def describe() -> list[tuple[str, str]]:
    return [(n, get(n).DESCRIPTION) for n in EXPERIMENTS]
