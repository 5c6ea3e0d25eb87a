"""README's example runs as written (with fewer steps)."""

import re
from pathlib import Path


def test_readme_example_runs(tmp_path, monkeypatch):
    text = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    code = code.replace("steps=2000", "steps=5").replace('checkpoint="runs/my-kd.pt"',
                                                         'checkpoint="runs/my-kd.pt", progress=False')
    monkeypatch.chdir(tmp_path)
    ns = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert len(ns["history"]["loss"]) == 5
    assert (tmp_path / "runs" / "my-kd.pt").exists()
    assert ns["loss"].requires_grad
