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
