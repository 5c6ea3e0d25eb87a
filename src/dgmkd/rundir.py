"""Run directories: where an experiment writes its resolved config, metric tables, plots and
``report.md``. Everything in a run directory is written by code from the run itself.

A run directory belongs to one run. :func:`open_run` claims it: a generated name is unique (made
with an exclusive ``mkdir``), a directory that already holds another run is refused unless the
caller resumes *that same* run (same experiment and config) or replaces it, and a lock file
stops two live processes from sharing one directory. ``status.json`` says whether the run is
``running``, ``finished`` or ``failed`` (with the error), so a half-written directory is never
mistaken for a result.

Example:
    >>> import tempfile, json
    >>> from pathlib import Path
    >>> from dgmkd import rundir
    >>> base = Path(tempfile.mkdtemp())
    >>> with rundir.open_run("demo", base / "r", {"steps": 3}) as out:
    ...     _ = (out / "results.csv").write_text("a\\n1\\n")
    >>> json.loads((base / "r" / "status.json").read_text())["status"]
    'finished'
    >>> try:
    ...     rundir.open_run("demo", base / "r", {"steps": 4}).__enter__()
    ... except rundir.RunDirError as e:
    ...     print(str(e).splitlines()[0])
    ... # doctest: +ELLIPSIS
    '...r' holds another run of demo (finished); config differs: steps: 3 there, 4 now
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from .harness import write_csv, write_json

__all__ = ["open_run", "create", "write_json", "write_csv", "RunDirError", "status", "diverged"]


class RunDirError(RuntimeError):
    """A run directory that cannot be used for this run (another run's, or in use)."""


def _unique(experiment: str) -> Path:
    base = Path("runs") / f"{experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
    base.parent.mkdir(parents=True, exist_ok=True)
    for k in range(1, 10_000):
        path = base if k == 1 else base.with_name(f"{base.name}-{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunDirError(f"cannot create a fresh run directory next to {str(base)!r}")


def create(experiment: str, out: str | Path | None = None) -> Path:
    """``out`` if given (created), else a fresh ``runs/<experiment>-<timestamp>[-k]``."""
    if out is None:
        return _unique(experiment)
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    return path


def status(out: str | Path) -> dict[str, Any] | None:
    """The run's ``status.json`` (``None`` for directories written before it existed)."""
    p = Path(out) / "status.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def diverged(notes: list[str]) -> list[str]:
    """The notes that say a training loop diverged (:class:`dgmkd.train.DivergenceWarning`)."""
    return [n for n in notes if n.startswith("DivergenceWarning")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _refuse_if_live(path: Path) -> None:
    lock = path / ".lock"
    try:
        pid = int(lock.read_text().strip() or "0")
    except (OSError, ValueError):
        return
    if pid and pid != os.getpid() and _alive(pid):
        raise RunDirError(f"{str(path)!r} is in use by a live run (process {pid}); wait for it or choose another "
                          "--out")


def _lock(path: Path) -> Path:
    lock = path / ".lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            _refuse_if_live(path)
            lock.unlink(missing_ok=True)  # left by a run that died
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return lock
    raise RunDirError(f"cannot lock {str(path)!r}")


def _differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    norm = (lambda v: json.loads(json.dumps(v, default=str)))  # noqa: E731  (tuples as lists)
    return [f"{k}: {json.dumps(old.get(k))} there, {json.dumps(norm(new.get(k)))} now"
            for k in keys if norm(old.get(k)) != norm(new.get(k))]


def _claim(experiment: str, out: str | Path | None, config: dict, resume: bool, force: bool) -> Path:
    if out is None:
        return _unique(experiment)
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{str(path)!r} exists and is not a directory")
    if path.is_dir():
        _refuse_if_live(path)
    if path.is_dir() and any(p.name != ".lock" for p in path.iterdir()):
        cfg_file = path / "config.json"
        old = None
        if cfg_file.is_file():
            try:
                old = json.loads(cfg_file.read_text())
            except ValueError:
                old = None
        if force:
            lock = _lock(path)  # never delete a directory a live run is writing
            for child in path.iterdir():
                if child != lock:
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            lock.unlink()
        elif old is None:
            raise RunDirError(f"{str(path)!r} is not empty and is not a run directory; choose another --out "
                              "(or --force to empty it)")
        else:
            st = (status(path) or {}).get("status", "unknown status")
            diffs = _differences(old, {"experiment": experiment, **config})
            if not resume or diffs:
                what = ("; config differs: " + "; ".join(diffs)) if diffs else ""
                raise RunDirError(f"{str(path)!r} holds another run of {old.get('experiment', '?')} ({st}){what}\n"
                                  "  --resume continues that same run (same experiment and config), --force replaces "
                                  "it, or choose another --out")
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def open_run(experiment: str, out: str | Path | None, config: dict[str, Any], *, resume: bool = False,
             force: bool = False, notes: list[str] | None = None) -> Iterator[Path]:
    """Claim a run directory for one run of ``experiment`` with ``config`` (see the module
    docstring), write ``config.json`` and ``status.json``, and yield its path; on exit the status
    becomes ``finished``, or ``failed`` with the error (which propagates), and the lock is released.
    ``notes`` (e.g. the warnings the run raised, collected while it runs) are written with the
    final status."""
    notes = notes if notes is not None else []
    path = _claim(experiment, out, config, resume, force)
    lock = _lock(path)
    try:
        write_json(path / "config.json", {"experiment": experiment, **config})
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        write_json(path / "status.json", {"status": "running", "started": started, "pid": os.getpid()})
        try:
            yield path
        except BaseException as e:
            write_json(path / "status.json", {"status": "failed", "started": started,
                                              "error": f"{type(e).__name__}: {e}"[:2000], "warnings": notes,
                                              "diverged": diverged(notes)})
            raise
        write_json(path / "status.json", {"status": "finished", "started": started,
                                          "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "warnings": notes,
                                          "diverged": diverged(notes)})
    finally:
        lock.unlink(missing_ok=True)
