"""Every registered experiment runs its test-sized quick form, and `dgmkd report` rebuilds its
report from the run directory's data identically."""

import pytest

import dgmkd

from dgmkd import experiments
from dgmkd.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_experiment_has_the_protocol():
    for name in experiments.EXPERIMENTS:
        mod = experiments.get(name)
        for attr in ("Config", "QUICK", "DESCRIPTION", "run", "report"):
            assert hasattr(mod, attr), f"experiment {name} lacks {attr}"


@pytest.mark.parametrize("name", list(experiments.EXPERIMENTS))
def test_quick_run_and_report_rebuild(name, tmp_path, capsys):
    mod = experiments.get(name)
    sets = [f"{k}={','.join(map(str, v)) if isinstance(v, (tuple, list)) else v}"
            for k, v in getattr(mod, "TEST", {}).items()]
    out = tmp_path / "run"
    args = ["run", name, "--quick", "--quiet", "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    first = (out / "report.md").read_text()
    assert first.strip()
    # the trained models: models/<role>.safetensors, every student rebuilt by dgmkd.load(path) alone
    saved = sorted((out / "models").glob("*.safetensors"))
    students = [p for p in saved if p.name.startswith("student-")]
    assert students, sorted(p.name for p in saved)
    for p in students:
        m = dgmkd.load(p)
        assert sum(t.numel() for t in m.state_dict().values()) > 0, p.name
    (out / "report.md").unlink()
    capsys.readouterr()
    assert main(["report", str(out), "--out", str(tmp_path / "cmp.md")]) == 0
    assert (out / "report.md").read_text() == first
    # a second run into the same directory is refused and loses nothing of the first
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(args) == 2
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files


# the image experiments on the embedded 28x28 MNIST, at their TEST sizes with as few images as work
MNIST = {"hvae-compress": {"dataset": "mnist", "data_limit": 200},
         "continual": {"dataset": "mnist", "data_limit": 200},
         "avkd": {"dataset": "mnist", "tasks": "A", "methods": "teacher,kd,avkd"},
         "flow-kd": {"image_dataset": "mnist", "datasets": ()},  # the image part alone
         "density-distill": {"parts": "digits", "img_dataset": "mnist", "img_cnn_metrics": True,
                             "img_losses": "reverse_kl,x_recon", "eval_samples": 100}}


@pytest.mark.parametrize("name", list(MNIST))
def test_quick_run_on_mnist_and_report_rebuild(name, tmp_path, capsys):
    """``dataset=mnist`` (flow-kd: ``image_dataset``, density-distill: ``img_dataset``) runs end to end
    on 28x28 images, says so in the report with the MNIST CNN's held-out accuracy, and the report
    rebuilds byte for byte."""
    mod = experiments.get(name)
    sets = {**getattr(mod, "TEST", {}), **MNIST[name]}
    out = tmp_path / "run"
    args = ["run", name, "--quick", "--quiet", "--out", str(out)]
    for k, v in sets.items():
        args += ["--set", f"{k}={','.join(map(str, v)) if isinstance(v, (tuple, list)) else v}"]
    assert main(args) == 0
    first = (out / "report.md").read_text()
    assert "MNIST" in first or "mnist" in first
    if name != "avkd":  # the classifier experiment has no image metrics
        assert "held-out accuracy 0.9" in first
    if name == "flow-kd":  # no tabular data sets: no tabular or speed tables
        assert "Table 2 analogue" not in first and not (out / "tabular.csv").exists()
    (out / "report.md").unlink()
    capsys.readouterr()
    assert main(["report", str(out), "--out", str(tmp_path / "cmp.md")]) == 0
    assert (out / "report.md").read_text() == first


@pytest.mark.slow
def test_demo_full_run_both_methods_bring_the_student_to_the_teacher(tmp_path):
    """docs/guide.md (the demo): data-free distillation by either method lowers its loss and the
    squared MMD between teacher and student outputs well below the untrained student's."""
    assert main(["run", "demo", "--quiet", "--out", str(tmp_path / "r")]) == 0
    res = __import__("dgmkd").harness.read_json(tmp_path / "r" / "results.json")
    for method in ("unified", "local"):
        r = res[method]
        assert r["loss_last"] < 0.5 * r["loss_first"], (method, r)
        assert r["mmd2_after"] < 0.25 * r["mmd2_before"], (method, r)
