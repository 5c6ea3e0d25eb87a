"""The command line: list, run with overrides, clear errors."""

import json

from dgmkd import experiments
from dgmkd.cli import main


def test_list_shows_every_experiment(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in experiments.EXPERIMENTS:
        assert name in out


def test_run_demo_writes_a_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "demo", "--quick", "--quiet", "--set", "steps=40", "--set", "eval_samples=200",
                 "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["steps"] == 40 and cfg["experiment"] == "demo"
    report = (out / "report.md").read_text()
    assert "| unified |" in report and "| local |" in report
    assert (out / "loss.png").stat().st_size > 1000
    assert "step" in (out / "history.csv").read_text().splitlines()[0]


def test_bad_experiment_and_key_are_errors(tmp_path, capsys):
    assert main(["run", "nope"]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err
    assert main(["run", "demo", "--set", "stepz=1", "--out", str(tmp_path / "x")]) == 2
    assert "unknown config key 'stepz'" in capsys.readouterr().err
    assert main(["run", "demo", "--set", "steps=0", "--out", str(tmp_path / "x")]) == 2
    assert "steps=0" in capsys.readouterr().err


def test_report_rebuilds_and_compares(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for out, steps in ((a, "20"), (b, "30")):
        assert main(["run", "demo", "--quiet", "--set", f"steps={steps}", "--set", "eval_samples=100",
                     "--out", str(out)]) == 0
    (a / "report.md").unlink()
    (a / "loss.png").unlink()
    capsys.readouterr()
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "cmp.md")]) == 0
    assert (a / "report.md").exists() and (a / "loss.png").exists()  # rebuilt from the run's data
    cmp = (tmp_path / "cmp.md").read_text()
    assert "| steps | 20 | 30 |" in cmp and cmp.count("| unified |") == 2
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "not a run directory" in capsys.readouterr().err
