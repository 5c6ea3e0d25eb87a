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
