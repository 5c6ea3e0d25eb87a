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


def test_run_help_lists_every_config_key_with_default_and_meaning(capsys):
    import pytest

    from dgmkd import config

    with pytest.raises(SystemExit) as e:
        main(["run", "demo", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--device" in text
    for key, _, default, meaning in config.describe(experiments.get("demo").Config):
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"{key}="))
        assert line.strip().startswith(f"{key}={default}") and meaning and meaning in line, line
    for name in experiments.EXPERIMENTS:  # every key of every experiment has a meaning
        missing = [k for k, _, _, m in config.describe(experiments.get(name).Config) if not m]
        assert not missing, (name, missing)


def test_unavailable_device_is_an_error_not_a_cpu_run(tmp_path, capsys):
    import torch

    out = tmp_path / "run"
    if not torch.cuda.is_available():
        assert main(["run", "demo", "--device", "cuda", "--out", str(out)]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
        assert not out.exists()
    assert main(["run", "demo", "--device", "cuda:99", "--out", str(out)]) == 2
    assert "cuda:99" in capsys.readouterr().err
    assert main(["run", "demo", "--device", "toaster", "--out", str(out)]) == 2
    assert "not a torch device" in capsys.readouterr().err and not out.exists()


def test_device_cpu_runs_and_fit_sees_the_device(tmp_path, capsys, monkeypatch):
    from dgmkd import train

    seen = []
    monkeypatch.setattr("dgmkd.experiments.demo.distill", lambda *a, **kw: (seen.append(train._DEFAULT_DEVICE),
                                                                             train.distill(*a, **kw))[1])
    out = tmp_path / "run"
    assert main(["run", "demo", "--quiet", "--device", "cpu", "--set", "steps=5", "--set", "eval_samples=50",
                 "--out", str(out)]) == 0
    assert "(device cpu)" in capsys.readouterr().out
    assert seen and all(str(d) == "cpu" for d in seen)
    assert train._DEFAULT_DEVICE is None  # restored after the run
