"""Run directories are exclusive and honest: another run's directory is refused (or resumed, or
replaced, on request), generated names are unique, a lock keeps live runs apart, a failed run is
marked failed, and a bad config stops before anything is created."""

import json
import subprocess
import sys

import pytest

from dgmkd import rundir
from dgmkd.cli import main

DEMO = ["--quick", "--quiet", "--set", "steps=20", "--set", "eval_samples=100"]


def test_a_second_run_into_the_same_directory_is_refused_and_the_first_kept(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", "demo", *DEMO, "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert json.loads((out / "status.json").read_text())["status"] == "finished"
    capsys.readouterr()
    assert main(["run", "demo", *DEMO, "--set", "steps=30", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds another run of demo (finished)" in err and "steps: 20 there, 30 now" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # the same config again is refused too, unless --resume; a changed config with --resume is refused
    assert main(["run", "demo", *DEMO, "--out", str(out)]) == 2
    assert main(["run", "demo", *DEMO, "--set", "steps=30", "--resume", "--out", str(out)]) == 2
    assert main(["run", "demo", *DEMO, "--resume", "--out", str(out)]) == 0
    assert main(["run", "demo", *DEMO, "--set", "steps=30", "--force", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["steps"] == 30


def test_a_non_run_directory_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    assert main(["run", "demo", *DEMO, "--out", str(out)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert (out / "thesis.tex").read_text() == "precious" and len(list(out.iterdir())) == 1


def test_generated_names_are_unique(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = {rundir.create("demo") for _ in range(5)}  # all within one second
    assert len(paths) == 5 and all(p.is_dir() for p in paths)


def test_a_live_lock_refuses_and_a_stale_one_is_taken_over(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(str(sleeper.pid))
        with pytest.raises(rundir.RunDirError, match=f"in use by a live run \\(process {sleeper.pid}\\)"):
            with rundir.open_run("demo", out, {"a": 1}):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    with rundir.open_run("demo", out, {"a": 1}) as p:  # the lock's process is gone
        assert (p / ".lock").read_text() == str(__import__("os").getpid())
    assert not (out / ".lock").exists()


def test_a_failed_run_is_marked_failed(tmp_path):
    out = tmp_path / "r"
    with pytest.raises(ZeroDivisionError):
        with rundir.open_run("demo", out, {"a": 1}):
            1 / 0
    st = rundir.status(out)
    assert st["status"] == "failed" and "ZeroDivisionError" in st["error"]


@pytest.mark.parametrize("bad, message", [
    (["--set", "lr=nan"], "must be a finite number"),
    (["--set", "stepz=1"], "unknown config key"),
])
def test_bad_config_stops_before_the_directory_exists(tmp_path, capsys, bad, message):
    out = tmp_path / "never"
    assert main(["run", "demo", "--quiet", *bad, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_config_files_bool_for_int_and_yaml_are_refused(tmp_path, capsys):
    j = tmp_path / "c.json"
    j.write_text('{"steps": true}')
    assert main(["run", "demo", "--config", str(j), "--out", str(tmp_path / "x")]) == 2
    assert "steps: expected int, got the boolean True" in capsys.readouterr().err
    y = tmp_path / "c.yaml"
    y.write_text("steps: 3\n")
    assert main(["run", "demo", "--config", str(y), "--out", str(tmp_path / "x")]) == 2
    assert "YAML" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_report_of_damaged_data_names_the_file_and_keeps_the_report(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", "demo", *DEMO, "--out", str(out)]) == 0
    good = (out / "report.md").read_text()
    (out / "results.json").write_text('{"unified": ')
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    assert "results.json" in capsys.readouterr().err
    assert (out / "report.md").read_text() == good


def test_a_diverging_run_is_reported_in_its_status(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", "demo", *DEMO, "--set", "lr=1e6", "--set", "methods=unified,local", "--out", str(out)]) == 0
    st = json.loads((out / "status.json").read_text())
    assert any("diverged" in w for w in st["warnings"]), st
    cap = capsys.readouterr()
    assert "warning(s) during the run" in cap.out
    # marked in status.json, in report.md (which loop, which step) and on stderr
    assert st["status"] == "finished" and len(st["diverged"]) == 2, st
    assert "the run diverged: distill[unified]: the loss grew" in cap.err
    text = (out / "report.md").read_text()
    assert "**The run diverged** in 2 training loop(s)" in text
    assert "- distill[local]: the loss grew from" in text and "at step 1" in text
    # the rebuilt report says so too, byte for byte
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.md").read_text() == text


def test_a_run_whose_loss_turns_non_finite_fails_with_exit_3(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", "demo", *DEMO, "--set", "lr=1e30", "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert "dgmkd: error: loss is inf at step" in err and "marked failed" in err and "Traceback" not in err
    st = json.loads((out / "status.json").read_text())
    assert st["status"] == "failed" and "NonFiniteLossError" in st["error"], st
    assert not (out / "report.md").exists()


def test_a_run_without_warnings_has_no_warnings_section(tmp_path):
    out = tmp_path / "r"
    assert main(["run", "demo", *DEMO, "--out", str(out)]) == 0
    assert json.loads((out / "status.json").read_text())["diverged"] == []
    assert "Warnings raised" not in (out / "report.md").read_text()
