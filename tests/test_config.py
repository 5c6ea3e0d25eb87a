"""Typed configs: overrides parse to the declared types; bad keys and values are named."""

from dataclasses import dataclass
from typing import Literal

import pytest

from dgmkd.config import ConfigError, load_file, override


@dataclass
class C:
    steps: int = 10
    lr: float = 1e-3
    method: Literal["unified", "local"] = "unified"
    widths: tuple[int, ...] = (8, 16)
    quick: bool = False
    note: str | None = None


def test_overrides_are_typed():
    c = override(C(), ["steps=20", "lr=0.5", "method=local", "widths=1,2,3", "quick=true", "note=hi"])
    assert c == C(20, 0.5, "local", (1, 2, 3), True, "hi")
    assert override(C(), ["note=none"]).note is None


@pytest.mark.parametrize("bad,match", [
    (["stepz=3"], "unknown config key 'stepz'.*known keys: steps"),
    (["steps=three"], "steps: expected int"),
    (["method=global"], "method: 'global' is not allowed; choose one of unified, local"),
    (["quick=maybe"], "quick: expected a boolean"),
    (["steps"], "malformed override 'steps'"),
    (["widths=1,x"], "widths: expected int"),
])
def test_bad_overrides_are_named(bad, match):
    with pytest.raises(ConfigError, match=match):
        override(C(), bad)


def test_config_files(tmp_path):
    (tmp_path / "a.json").write_text('{"steps": 5, "widths": [2, 4]}')
    (tmp_path / "b.toml").write_text('lr = 0.25\nmethod = "local"\n')
    (tmp_path / "bad.json").write_text('{"steps": ')
    assert load_file(C(), tmp_path / "a.json") == C(steps=5, widths=(2, 4))
    assert load_file(C(), tmp_path / "b.toml") == C(lr=0.25, method="local")
    with pytest.raises(ConfigError, match="malformed"):
        load_file(C(), tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="does not exist"):
        load_file(C(), tmp_path / "none.json")


def test_an_experiments_own_validation_becomes_a_config_error():
    @dataclass
    class V:
        algorithm: str = "ws"

        def validate(self):
            if self.algorithm not in ("ws", "rws"):
                raise ValueError(f"algorithm must be 'ws' or 'rws', got {self.algorithm!r}")

    with pytest.raises(ConfigError, match="algorithm must be 'ws' or 'rws', got 'xx'"):
        override(V(), ["algorithm=xx"])


@dataclass
class Shapes:
    pair: tuple[int, int] = (6, 32)
    sizes: dict[str, int] = None
    names: tuple = ("a",)


def test_fixed_length_tuples_and_dicts():
    c = override(Shapes(), ["pair=3,16", 'sizes={"n_train": 100, "n_test": 50}'])
    assert c.pair == (3, 16) and c.sizes == {"n_train": 100, "n_test": 50}
    with pytest.raises(ConfigError, match="pair: expected 2 comma-separated values"):
        override(Shapes(), ["pair=3"])
    with pytest.raises(ConfigError, match="sizes.n_train: expected int"):
        override(Shapes(), ['sizes={"n_train": "many"}'])
    with pytest.raises(ConfigError, match="sizes: expected a JSON object"):
        override(Shapes(), ["sizes=100"])
    # a bare tuple cannot be parsed element-wise: "ab" must not become ("a", "b")
    with pytest.raises(ConfigError, match="names: the config declares a bare tuple"):
        override(Shapes(), ["names=ab"])


def _as_cli(v):
    import json

    if isinstance(v, (tuple, list)):
        return ",".join(map(str, v))
    if isinstance(v, dict):
        return json.dumps(v)
    return str(v)


def test_every_experiment_default_round_trips_through_the_command_line():
    # each field of every experiment's config, written as `--set key=value` text, parses back to its
    # default: no field is unreachable from the command line or parsed into something else
    import dataclasses

    from dgmkd import experiments

    for name in experiments.EXPERIMENTS:
        cfg = experiments.get(name).Config()
        for f in dataclasses.fields(cfg):
            v = getattr(cfg, f.name)
            if v is None or v == () or v == "":
                continue
            back = getattr(override(cfg, [f"{f.name}={_as_cli(v)}"]), f.name)
            assert back == v, (name, f.name, v, back)


# ------------------------------------------------------------------------------------ every experiment's ranges
# a value of 0 that an experiment documents as meaningful (a linear residual student)
_ZERO_OK = {("toy-chain", "hidden"), ("toy-chain", "binomial_hidden"), ("toy-chain", "regime_hidden")}


def _bad_values(exp: str, key: str) -> list[str]:
    """The out-of-range ``--set`` values of a config key, by what the key's name says it is."""
    bad = []
    if key in ("steps", "iters") or (key.endswith("_steps") and key != "encoder_steps"):
        bad += ["0", "-5"]
    if key in ("encoder_steps", "warmup"):
        bad += ["-5"]
    if key == "batch" or key.endswith("_batch"):
        bad += ["0", "-1"]
    if key == "lr" or key.endswith("_lr") or key.startswith("lr_"):
        bad += ["nan", "inf", "0", "-1"]
    if key.endswith("eval_samples") or key in ("image_samples", "nll_k", "iwae_k", "iwae_test", "kl_samples"):
        bad += ["0"]
    if key == "ratios":
        bad += ["0", "15,0"]
    if key in ("latent_weight", "consistency_weight", "w_prior", "w_adv"):
        bad += ["-1", "nan"]
    if "hidden" in key or "width" in key or key == "z_dim":
        bad += ["-3"] + ([] if (exp, key) in _ZERO_OK else ["0"])
    if key == "latent_divergence":
        bad += ["w3"]
    if key in ("dataset", "datasets"):
        bad += ["digit"]
    if key.endswith("seeds"):
        bad += [""]
    if "fraction" in key:
        bad += ["0", "1", "1.5", "-0.1"]
    if key in ("methods", "tasks", "archs", "losses", "parts", "splits"):
        bad += ["", "bogus"]
    if key in ("latent_dims", "dims", "layers"):
        bad += ["", "0"]
    if key in ("sigma", "y_std", "noise_var") or key.endswith("temperature"):
        bad += ["0", "-1"]
    if key == "threads":
        bad += ["0"]
    if key.endswith("grad_clip"):
        bad += ["-1"]
    return bad


def _bad_cases():
    import dataclasses

    from dgmkd import experiments

    return [(name, f.name, v) for name in experiments.EXPERIMENTS
            for f in dataclasses.fields(experiments.get(name).Config()) if f.type not in (bool, "bool")
            for v in _bad_values(name, f.name)]


def test_the_bad_value_table_covers_the_reported_inputs():
    cases = {(k, v) for _, k, v in _bad_cases()}
    for kv in [("steps", "0"), ("steps", "-5"), ("batch", "0"), ("lr", "nan"), ("eval_samples", "0"), ("ratios", "0"),
               ("latent_weight", "-1"), ("student_hidden", "0"), ("latent_divergence", "w3"), ("dataset", "digit"),
               ("teacher_width", "0"), ("width", "0"), ("seeds", ""), ("val_fraction", "1")]:
        assert kv in cases, kv
    assert {n for n, _, _ in _bad_cases()} >= {"demo", "hm-compress", "vrnn-compress", "hvae-compress", "toy-chain",
                                               "density-distill", "flow-kd", "avkd", "continual"}


@pytest.mark.parametrize("experiment,key,value", _bad_cases())
def test_every_out_of_range_value_stops_before_the_run_directory(tmp_path, monkeypatch, capsys, experiment, key,
                                                                 value):
    """``dgmkd run EXP --set key=bad --out DIR``: exit 2 with a message naming the key, the value and
    what is allowed, and neither DIR nor a default runs/ folder exists afterwards."""
    import re

    from dgmkd import experiments
    from dgmkd.cli import main

    def accepted(cfg, out):
        raise AssertionError(f"{experiment}: {key}={value!r} was accepted")

    monkeypatch.setattr(experiments.get(experiment), "run", accepted)  # fail fast, never train
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main(["run", experiment, "--quick", "--quiet", "--out", str(out), "--set", f"{key}={value}"]) == 2
    msg = capsys.readouterr().err
    assert key in msg and (value.split(",")[-1] if value else "()") in msg, msg
    assert re.search(r"must|choose|allowed|need|give|use", msg), msg
    if key in ("dataset", "datasets"):  # names the data sets that exist, not a missing data_root
        default = getattr(__import__("dgmkd.experiments", fromlist=["get"]).get(experiment).Config(), key)
        assert str(default if isinstance(default, str) else default[0]) in msg, msg
    assert list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())
