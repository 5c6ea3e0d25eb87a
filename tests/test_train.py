"""The training loop: resume after a kill equals an uninterrupted run; NaN stops with the step."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.distributions import Normal

import dgmkd
from dgmkd import checkpoint as ck
from dgmkd.models import MLPDGM
from dgmkd.train import make_inputs


def models():
    torch.manual_seed(0)
    return MLPDGM((2, 2), hidden=16), MLPDGM((2, 2), hidden=4)


def _params(m):
    return torch.cat([p.detach().flatten() for p in m.parameters()])


@pytest.mark.parametrize("method", ["unified", "local", "hybrid", "default"])
def test_distill_lowers_the_loss(method):
    t, s = models()
    h = dgmkd.distill(t, s, 64, method=method, steps=150, lr=1e-2, progress=False)
    first, last = sum(h["loss"][:10]) / 10, sum(h["loss"][-10:]) / 10
    assert last < 0.6 * first
    assert h["step"] == list(range(150))


SCRIPT = textwrap.dedent("""
    import os, sys, torch, dgmkd
    from dgmkd.models import MLPDGM
    torch.manual_seed(0)
    t, s = MLPDGM((2, 2), hidden=16), MLPDGM((2, 2), hidden=4)
    def kill(step, row):
        if step == int(sys.argv[2]):
            os._exit(9)  # an abrupt kill: no cleanup, no final checkpoint
    dgmkd.distill(t, s, 32, steps=40, lr=1e-2, checkpoint=sys.argv[1], checkpoint_every=7,
                  progress=False, callback=kill)
""")


def test_killed_run_resumes_to_the_same_parameters(tmp_path):
    path = tmp_path / "ck.pt"
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(path), "23"], capture_output=True, text=True)
    assert r.returncode == 9, r.stderr
    assert ck.load(path)["step"] == 21  # the last periodic checkpoint before the kill
    t, s = models()
    h_resumed = dgmkd.distill(t, s, 32, steps=40, lr=1e-2, checkpoint=path, checkpoint_every=7, progress=False)
    t2, s2 = models()
    h_full = dgmkd.distill(t2, s2, 32, steps=40, lr=1e-2, progress=False)
    assert torch.equal(_params(s), _params(s2))
    assert h_resumed["loss"] == h_full["loss"]  # the history survives the kill too


def test_iterable_inputs_resume_at_the_right_item(tmp_path):
    data = [(torch.randn(16, 3),) for _ in range(5)]  # 5 batches: resume mid-epoch

    class Reg(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Linear(3, 2)

        def forward(self, x):
            return dgmkd.target("y", Normal(self.f(x), 1.0))

    def run(steps, path=None):
        torch.manual_seed(1)
        t, s = Reg(), Reg()
        dgmkd.distill(t, s, data, steps=steps, checkpoint=path, checkpoint_every=4, progress=False)
        return s

    full = run(13)
    run(8, tmp_path / "c.pt")  # stops at step 8 (checkpoint written at the end)
    resumed = run(13, tmp_path / "c.pt")
    assert torch.equal(_params(full), _params(resumed))


def test_nan_stops_with_step_and_keeps_last_checkpoint(tmp_path):
    t, s = models()
    path = tmp_path / "ck.pt"

    def loss(c):
        base = dgmkd.losses.unified(c)
        return base * float("nan") if loss.calls >= 12 else base

    loss.calls = 0

    def count(step, row):
        loss.calls += 1

    with pytest.raises(dgmkd.NonFiniteLossError, match="at step 12.*last good checkpoint"):
        dgmkd.distill(t, s, 16, method=loss, steps=30, checkpoint=path, checkpoint_every=5, progress=False,
                      callback=count)
    saved = ck.load(path)
    assert saved["step"] == 10
    assert all(torch.isfinite(v).all() for v in saved["state"]["student"].values())


def test_checkpoint_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pt"

    import argparse

    torch.save({"x": argparse.Namespace(cmd="rm -rf /")}, path)  # any pickled object
    with pytest.raises(ck.CheckpointError, match="safely"):
        ck.load(path)


def test_checkpoint_for_another_run_is_named(tmp_path):
    path = tmp_path / "c.pt"
    ck.save(path, {"step": 1, "state": {"other": {}}, "rng": torch.get_rng_state(), "history": {}})
    t, s = models()
    with pytest.raises(ck.CheckpointError, match="no state for"):
        dgmkd.distill(t, s, 8, steps=2, checkpoint=path, progress=False)


def test_make_inputs_forms():
    assert make_inputs(7)(0) == (7,)
    assert make_inputs(lambda: 3)(5) == (3,)
    it = make_inputs([(1,), (2,), (3,)])
    assert [it(i)[0] for i in range(7)] == [1, 2, 3, 1, 2, 3, 1]
    assert make_inputs([(1,), (2,), (3,)])(4) == (2,)  # positioned after 4 items
    with pytest.raises(ValueError):
        make_inputs(0)
    with pytest.raises(ValueError, match="empty"):
        make_inputs([])(0)
    with pytest.raises(TypeError):
        make_inputs(1.5)


def test_unknown_method_is_named():
    t, s = models()
    with pytest.raises(ValueError, match="unknown method 'fancy'"):
        dgmkd.distill(t, s, 8, method="fancy", steps=1, progress=False)


def test_no_method_runs_the_default_hybrid_objective():
    """Without ``method``, distill runs ``DEFAULT``: the hybrid loss ``w * local + unified`` on a
    shared-noise coupling drawn first and a teacher-forced one drawn after it."""
    from dgmkd.train import DEFAULT

    def first_loss(**kw):
        t, s = models()
        return dgmkd.distill(t, s, 64, steps=1, lr=1e-2, progress=False, **kw)["loss"][0]

    assert DEFAULT["method"] == "hybrid"
    assert first_loss() == first_loss(method="hybrid", local_weight=DEFAULT["local_weight"])
    # the shared-noise coupling comes first, so with no local term the first loss is unified's
    assert first_loss(method="hybrid", local_weight=0.0) == pytest.approx(first_loss(method="unified"), rel=1e-6)
    # and the local term enters linearly with its weight (the same draws at every weight)
    l0, l1, l3 = (first_loss(method="hybrid", local_weight=w) for w in (0.0, 1.0, 3.0))
    assert l1 > l0 and l3 - l0 == pytest.approx(3 * (l1 - l0), rel=1e-5)
    with pytest.raises(ValueError, match="local_weight"):
        first_loss(method="hybrid", local_weight=-1.0)


def test_the_default_goes_on_without_discrete_grad_for_a_type_without_jumps():
    from torch.distributions import Bernoulli, Independent

    class Coin(Bernoulli):  # a user's discrete type, registered without its jumps
        pass

    dgmkd.reparam.register(Coin, lambda d: torch.rand(d.batch_shape), lambda d, u: (u >= 1 - d.probs).float(),
                           law="standard_uniform")

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.zeros(2))
            self.f = nn.Linear(2, 1)

        def forward(self, n):
            z = dgmkd.latent("z", Independent(Coin(logits=self.a.expand(n, 2)), 1))
            return dgmkd.target("y", Normal(self.f(z), 1.0))

    torch.manual_seed(0)
    t, s = M(), M()
    with pytest.warns(RuntimeWarning, match="without discrete_grad"):
        h = dgmkd.distill(t, s, 16, steps=3, progress=False)
    assert len(h["loss"]) == 3
    with pytest.raises(TypeError, match="jumps"):  # asked for explicitly: the error names what to register
        dgmkd.distill(t, s, 16, steps=1, progress=False, discrete_grad=True)


def test_device_argument_moves_models_and_inputs():
    t, s = models()
    h = dgmkd.distill(t, s, 8, steps=2, device="cpu", progress=False)
    assert len(h["loss"]) == 2


# ----------------------------------------------------------------------------- fit
def test_fit_minimizes_and_resumes_exactly(tmp_path):
    from dgmkd.train import fit, minibatches

    g = torch.Generator().manual_seed(0)  # the data do not depend on what ran before
    x = torch.randn(200, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(200, generator=g)

    def run(steps, path):
        torch.manual_seed(0)
        lin = torch.nn.Linear(3, 1)
        h = fit(lambda a, s: ((lin(a[0]).squeeze(-1) - a[1]) ** 2).mean(), lin, minibatches(x, y, batch=16),
                steps, lr=0.2, checkpoint=path, checkpoint_every=7, progress=False, seed=3)
        return lin, h

    full, hf = run(40, None)
    assert hf["loss"][-1] < 0.1 * hf["loss"][0]
    run(19, tmp_path / "c.pt")  # "killed" after 19 steps (checkpoint at 19)
    resumed, hr = run(40, tmp_path / "c.pt")
    assert hr["loss"] == hf["loss"]
    assert torch.equal(resumed.weight, full.weight)


def test_fit_guard_stops_before_the_step(tmp_path):
    from dgmkd.train import NonFiniteLossError, fit

    lin = torch.nn.Linear(1, 1)
    w0 = lin.weight.detach().clone()
    with pytest.raises(NonFiniteLossError, match="step 0"):
        fit(lambda a, s: lin(torch.ones(1, 1)).sum() * float("inf"), lin, 1, 5, progress=False)
    assert torch.equal(lin.weight, w0)  # the inf never reached the weights


def test_fit_alternating_objectives_touch_only_their_parameters():
    from dgmkd.train import fit

    a, b = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    b0 = b.weight.detach().clone()
    h = fit({"a": lambda args, s: (a(torch.ones(1, 1)) - 3).pow(2).sum(),
             "b": lambda args, s: {"loss": 0 * b(torch.ones(1, 1)).sum(), "extra": torch.tensor(1.0)}},
            {"a": a, "b": b}, 1, 200, params={"a": list(a.parameters()), "b": list(b.parameters())},
            lr={"a": 0.05, "b": 0.0 + 1e-9}, progress=False)
    assert h["a.loss"][-1] < 1e-3 and h["b.extra"][-1] == 1.0
    assert torch.allclose(b.weight, b0, atol=1e-6)


def test_fit_rejects_bad_arguments():
    from dgmkd.train import fit

    lin = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match="learning rate"):
        fit(lambda a, s: lin(torch.ones(1, 1)).sum(), lin, 1, 1, lr=float("nan"), progress=False)
    with pytest.raises(ValueError, match="unknown optimizer"):
        fit(lambda a, s: lin(torch.ones(1, 1)).sum(), lin, 1, 1, optimizer="lbfgs", progress=False)
    with pytest.raises(KeyError, match="without a 'loss'"):
        fit(lambda a, s: {"x": lin(torch.ones(1, 1)).sum()}, lin, 1, 1, progress=False)


# ----------------------------------------------------------------------------- what a checkpoint knows
@pytest.mark.parametrize("change", ["lr", "method", "teacher", "latent_weight", "student_shape"])
def test_resume_with_another_run_refuses_and_lists_the_difference(tmp_path, change):
    path = tmp_path / "ck.pt"
    t, s = models()
    dgmkd.distill(t, s, 16, steps=4, lr=1e-3, checkpoint=path, progress=False)
    t, s = models()
    kw = dict(steps=8, lr=1e-3, checkpoint=path, progress=False)
    if change == "lr":
        kw["lr"] = 5e-3
    elif change == "method":
        kw["method"] = "local"
    elif change == "latent_weight":
        kw["latent_weight"] = 0.5
    elif change == "teacher":
        with torch.no_grad():
            next(t.parameters()).add_(0.01)
    elif change == "student_shape":
        s = MLPDGM((2, 2), hidden=5)
    key = {"lr": "optimizers", "method": "method", "teacher": "teacher", "latent_weight": "latent_weight",
           "student_shape": "modules"}[change]
    with pytest.raises(ck.CheckpointError, match=rf"different run(.|\n)*{key}: checkpoint"):
        dgmkd.distill(t, s, 16, **kw)


def test_a_finished_run_says_so_and_the_same_run_resumes(tmp_path):
    path = tmp_path / "ck.pt"
    t, s = models()
    dgmkd.distill(t, s, 16, steps=4, checkpoint=path, progress=False)
    t, s = models()
    with pytest.warns(UserWarning, match="finished run"):
        h = dgmkd.distill(t, s, 16, steps=4, checkpoint=path, progress=False)
    assert len(h["loss"]) == 4
    t, s = models()
    assert len(dgmkd.distill(t, s, 16, steps=6, checkpoint=path, progress=False)["loss"]) == 6


def test_corrupt_checkpoint_is_refused_and_stale_temporaries_go(tmp_path):
    path = tmp_path / "ck.pt"
    t, s = models()
    dgmkd.distill(t, s, 16, steps=3, checkpoint=path, progress=False)
    data = bytearray(path.read_bytes())
    w = max(ck.load(path)["state"]["student"].values(), key=lambda v: v.numel())
    needle = w.numpy().tobytes()[:32]  # flip bytes inside the largest weight tensor's data
    at = bytes(data).find(needle)
    assert at > 0
    data[at:at + 8] = bytes(b ^ 0xFF for b in data[at:at + 8])
    path.write_bytes(bytes(data))
    with pytest.raises(ck.CheckpointError, match="corrupt"):
        ck.load(path)
    stale = tmp_path / "ck.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    ck.save(path, {"step": 0})
    assert not stale.exists() and ck.load(path) == {"step": 0}


def test_unwritable_checkpoint_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    t, s = models()
    before = _params(s)
    with pytest.raises(ck.CheckpointError, match="cannot write checkpoint"):
        dgmkd.distill(t, s, 16, steps=5, checkpoint=blocker / "sub" / "ck.pt", progress=False)
    assert torch.equal(_params(s), before)


def test_guard_with_checkpoint_every_step_keeps_a_resumable_state(tmp_path):
    """The loss is checked before the optimizer step: with a checkpoint after every step, the kept
    state is the one before the bad step, and resuming from it works."""
    path = tmp_path / "ck.pt"
    t, s = models()
    calls = {"n": 0}

    def loss(c):
        calls["n"] += 1
        base = dgmkd.losses.unified(c)
        return base * float("inf") if calls["n"] == 6 else base

    with pytest.raises(dgmkd.NonFiniteLossError, match="inf at step 5"):
        dgmkd.distill(t, s, 16, method=loss, steps=10, checkpoint=path, checkpoint_every=1, progress=False)
    saved = ck.load(path)
    assert saved["step"] == 5 and all(torch.isfinite(v).all() for v in saved["state"]["student"].values())
    t, s2 = models()
    h = dgmkd.distill(t, s2, 16, method=loss, steps=10, checkpoint=path, checkpoint_every=1, progress=False)
    assert len(h["loss"]) == 10 and all(map(lambda v: v == v and abs(v) < float("inf"), h["loss"]))


# ----------------------------------------------------------------------------- the non-finite guard
def test_nonfinite_parameter_is_named_by_site_and_step():
    t, s = models()

    def poison(step, row):
        if step == 2:
            with torch.no_grad():
                next(p for n, p in s.named_parameters() if n.endswith("bias")).fill_(float("nan"))

    with pytest.raises(dgmkd.NonFiniteLossError, match=r"at step 3: non-finite parameters at student \w+ site '\w+'"):
        dgmkd.distill(t, s, 16, steps=10, progress=False, callback=poison)


def test_invalid_parameter_at_the_first_step_names_the_step():
    t, s = models()
    with torch.no_grad():
        for p in s.parameters():
            p.fill_(float("nan"))
    from dgmkd.coupling import validation

    with validation(True):  # importing zuko turns torch's argument checks off for the whole process
        with pytest.raises(dgmkd.NonFiniteLossError, match="at step 0 a distribution got an invalid parameter"):
            dgmkd.distill(t, s, 16, steps=3, progress=False)


def test_a_loss_that_explodes_is_reported():
    from dgmkd.train import fit

    w = nn.Parameter(torch.ones(1))
    m = nn.Module()
    m.w = w
    with pytest.warns(RuntimeWarning, match="the loss grew from 1 at step 0 .* diverged"):
        fit(lambda a, s: (w ** 2).sum(), m, 1, 8, lr=10.0, optimizer="sgd", progress=False)
    from dgmkd.train import DivergenceWarning

    w.data.fill_(1.0)
    with pytest.warns(DivergenceWarning, match="^toy-loop: the loss grew from 1 at step 0 to .* at step [1-9]"):
        fit(lambda a, s: (w ** 2).sum(), m, 1, 8, lr=10.0, optimizer="sgd", progress=False, desc="toy-loop")


@pytest.mark.parametrize("method, lw", [("unified", 0.37), ("unified", 0.0), ("local", 0.37)])
def test_distill_minimizes_exactly_the_named_loss(method, lw):
    """The first logged loss is the method's loss with the given latent weight at the same noise."""
    t, s = models()
    h = dgmkd.distill(t, s, 32, method=method, steps=1, latent_weight=lw, seed=11, progress=False)
    t, s = models()
    torch.manual_seed(11)
    mode = "teacher_forced" if method == "local" else "shared_noise"
    c = dgmkd.couple(t, s, 32, mode=mode)
    want = dgmkd.losses.local(c) if method == "local" else dgmkd.losses.unified(c, lw)
    assert h["loss"][0] == pytest.approx(float(want), rel=1e-6)
    if method == "unified" and lw:
        assert float(dgmkd.losses.latent(c)) > 0  # so a wrong weight would show


def test_every_logged_metric_is_guarded():
    from dgmkd.train import fit

    lin = nn.Linear(1, 1)
    with pytest.raises(dgmkd.NonFiniteLossError, match="aux is nan at step 0"):
        fit(lambda a, s: {"loss": lin(torch.ones(1, 1)).sum(), "aux": float("nan")}, lin, 1, 3, progress=False)


def test_a_crash_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    ck.save(path, {"step": 1, "w": torch.ones(1000)})
    real = torch.save

    def torn(obj, f, *a, **k):
        f.write(b"\x00" * 100)  # half a file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(KeyboardInterrupt):
        ck.save(path, {"step": 2, "w": torch.zeros(1000)})
    monkeypatch.setattr(torch, "save", real)
    got = ck.load(path)
    assert got["step"] == 1 and torch.equal(got["w"], torch.ones(1000))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_progress_is_plain_lines_when_not_a_terminal(capsys):
    import dgmkd

    lin = torch.nn.Linear(2, 1)
    dgmkd.fit(lambda a, s: lin(a[0]).pow(2).mean(), lin, lambda: torch.randn(8, 2), steps=50, lr=1e-2, desc="toy")
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("toy: step")]
    assert [ln.split()[2] for ln in lines] == [f"{k}/50" for k in range(5, 51, 5)], err  # every tenth, no bar
    assert "\r" not in err and "loss" in lines[-1] and "steps/s" in lines[-1]


def test_distill_log_csv_is_the_history_as_it_goes(tmp_path):
    import csv

    import dgmkd
    from dgmkd.models import MLPDGM

    def models():
        torch.manual_seed(0)
        return MLPDGM(latent_dims=(2,), hidden=16, out_dim=2), MLPDGM(latent_dims=(2,), hidden=4, out_dim=2)

    seen = []

    def peek(step, row):  # the file already holds the flushed rows while the run goes on
        if step == 45:
            with open(tmp_path / "m.csv") as f:
                seen.append(len(list(csv.reader(f))) - 1)

    t, s = models()
    h = dgmkd.distill(t, s, 32, steps=60, progress=False, log=tmp_path / "m.csv", callback=peek)
    with open(tmp_path / "m.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == h["step"] and [float(r["loss"]) for r in rows] == h["loss"]
    assert seen == [40]  # flushed every 20 steps
    # a resumed run rewrites the file from the checkpoint's history, then goes on
    t, s = models()
    dgmkd.distill(t, s, 32, steps=30, progress=False, checkpoint=tmp_path / "c.pt", checkpoint_every=10)
    t, s = models()
    h2 = dgmkd.distill(t, s, 32, steps=50, progress=False, checkpoint=tmp_path / "c.pt", log=tmp_path / "r.csv")
    with open(tmp_path / "r.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == h2["step"] == list(range(50))
    assert [float(r["loss"]) for r in rows] == h2["loss"]


def test_log_to_a_directory_needs_tensorboard(tmp_path):
    import importlib.util

    import dgmkd

    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed")
    lin = torch.nn.Linear(1, 1)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        dgmkd.fit(lambda a, s: lin(a[0]).pow(2).mean(), lin, lambda: torch.ones(2, 1), steps=2, progress=False,
                  log=tmp_path / "tb")
