"""The ``dgmkd`` command line: ``dgmkd list``, ``dgmkd run EXP [--quick] [--config FILE]
[--set key=value ...] [--out DIR] [--quiet] [--device DEV]`` (``dgmkd run EXP --help`` lists the
experiment's config keys with their defaults and meanings) and ``dgmkd report RUN_DIR... [--out FILE]``."""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import warnings
from pathlib import Path

from . import config as cfgmod
from . import distributed, experiments, report, rundir
from .data.errors import DataFormatError
from .train import NonFiniteLossError


def _parser(run_epilog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dgmkd", description="Knowledge distillation for deep directed graphical models")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list the reproduced experiments")
    r = sub.add_parser("run", help="run an experiment (`dgmkd run EXP --help` lists its config keys)",
                       epilog=run_epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("experiment")
    r.add_argument("--quick", action="store_true", help="the small form (minutes, for demos and smoke tests)")
    r.add_argument("--config", help="a JSON or TOML file of config keys")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    r.add_argument("--out", help="run directory (default: a fresh runs/<experiment>-<time>)")
    r.add_argument("--resume", action="store_true",
                   help="continue the run in --out (same experiment and config) instead of refusing it")
    r.add_argument("--force", action="store_true", help="replace whatever --out holds")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--device", help="torch device for every model and training loop (cpu, cuda, cuda:1, mps); "
                                    "an error if it is not available")
    rp = sub.add_parser("report", help="rebuild the reports and plots of run directories and compare them")
    rp.add_argument("runs", nargs="+", help="run directories written by `dgmkd run`")
    rp.add_argument("--out", help="write the side-by-side comparison here (default: print it)")
    return p


def check_device(name: str):
    """``torch.device(name)`` if this machine has it; a :class:`ValueError` saying why not otherwise
    (``--device cuda`` without CUDA is an error, never a silent CPU run)."""
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"--device {name!r} is not a torch device ({e}); use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine (torch {torch.__version__}, "
                             f"CUDA build: {torch.version.cuda or 'no'})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"--device {name}: MPS is not available on this machine")
    elif dev.type != "cpu":
        raise ValueError(f"--device {name}: only cpu, cuda and mps devices are supported")
    return dev


def _run_help(argv: list[str]) -> str | None:
    """The config keys of the experiment named in ``dgmkd run EXP --help`` (None if not that form)."""
    if len(argv) < 2 or argv[0] != "run" or not ({"-h", "--help"} & set(argv)):
        return None
    name = next((a for a in argv[1:] if not a.startswith("-")), None)
    if name is None or name not in experiments.EXPERIMENTS:
        return None
    mod = experiments.get(name)
    return f"{name}: {mod.DESCRIPTION}\n\n{cfgmod.help_text(mod.Config)}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser(_run_help(argv)).parse_args(argv)
    if args.cmd == "list":
        for name, desc in experiments.describe():
            print(f"{name:20s} {desc}")
        return 0
    if args.cmd == "report":
        try:
            text = report.compare(args.runs, args.out)
        except (FileNotFoundError, KeyError, ValueError) as e:  # ReportDataError and ConfigError are ValueErrors
            msg = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
            print(f"dgmkd: error: {msg}", file=sys.stderr)
            return 2
        if args.out:
            with open(args.out, "w") as f:
                f.write(text)
            print(f"comparison written to {args.out}")
        else:
            print(text)
        return 0
    try:
        mod = experiments.get(args.experiment)
        cfg = mod.Config()
        if args.quick:
            cfg = cfgmod.override(cfg, getattr(mod, "QUICK", {}))
        if args.config:
            cfg = cfgmod.load_file(cfg, args.config)
        if args.set:
            cfg = cfgmod.override(cfg, args.set)
        if args.quiet and hasattr(cfg, "progress"):
            cfg = cfgmod.override(cfg, {"progress": False})
        cfgmod.check(cfg)  # the whole config, before any directory, file or model exists
        device = check_device(args.device) if args.device else None
    except (KeyError, ValueError) as e:  # ConfigError is a ValueError
        print(f"dgmkd: error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    if device is not None:
        return _on_device(device, args, lambda: _run(args, mod, cfg, device))
    return _run(args, mod, cfg, None)


def _on_device(device, args, fn) -> int:
    """Run ``fn`` with ``device`` as the default of torch's tensor factories (models and tensors an
    experiment creates land there) and of every :func:`dgmkd.train.fit` / ``distill`` call (their
    modules and inputs are moved there)."""
    import torch

    from . import train

    old = torch.get_default_device()
    if device.type != "cpu":  # (a default device costs a dispatch on every torch call: not for the CPU)
        torch.set_default_device(device)
    train.set_default_device(device)
    try:
        return fn()
    finally:
        train.set_default_device(None)
        if device.type != "cpu":
            torch.set_default_device(old)


def _run(args, mod, cfg, device) -> int:
    if distributed.init(getattr(cfg, "device", None) or device) and not distributed.is_main():
        # under torchrun every rank runs the experiment; rank 0 alone writes the run directory
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            mod.run(cfg, Path(tmp))
        return 0
    if args.resume and args.force:
        print("dgmkd: error: --resume and --force exclude each other", file=sys.stderr)
        return 2
    notes: list[str] = []
    try:
        run = rundir.open_run(args.experiment, args.out, cfgmod.to_dict(cfg), resume=args.resume, force=args.force,
                              notes=notes)
        out = run.__enter__()
    except rundir.RunDirError as e:
        print(f"dgmkd: error: {e}", file=sys.stderr)
        return 2
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # printed as usual, and kept
        notes.append(f"{category.__name__}: {message}")
        shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        with contextlib.ExitStack() as stack:
            stack.push(run)
            print(f"dgmkd run {args.experiment}: writing to {out}{f' (device {device})' if device else ''}")
            mod.run(cfg, out)
    except NonFiniteLossError as e:  # the guard stopped training; status.json says failed
        print(f"dgmkd: error: {e} (run directory {out} is marked failed)", file=sys.stderr)
        return 3
    except DataFormatError as e:  # the user's data files; status.json says failed
        print(f"dgmkd: error: {e} (run directory {out} is marked failed)", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = shown
    if notes and (out / "report.md").is_file():
        report.annotate(out)
    print(f"results in {out} (report.md, CSV, PNG)")
    if notes:
        print(f"{len(notes)} warning(s) during the run (kept in {out / 'status.json'} and at the end of report.md)")
    for n in rundir.diverged(notes):
        print(f"dgmkd: warning: the run diverged: {n.split(': ', 1)[1]}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
