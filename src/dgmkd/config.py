"""Typed experiment configs, overridable from a file and from the command line.

Every experiment declares a ``@dataclass`` config — its defaults live there and nowhere else.
:func:`override` applies ``key=value`` strings (``--set``) and :func:`load_file` a JSON or TOML
file (``--config``); values are parsed to the field's declared type and unknown keys or bad values
raise :class:`ConfigError` naming the key and what is allowed.

Example:
    >>> from dataclasses import dataclass
    >>> from dgmkd.config import override
    >>> @dataclass
    ... class C:
    ...     steps: int = 10
    ...     lr: float = 1e-3
    ...     widths: tuple[int, ...] = (8, 16)
    >>> override(C(), ["steps=20", "widths=4,8"])
    C(steps=20, lr=0.001, widths=(4, 8))
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path
from typing import Any, Literal

__all__ = ["ConfigError", "override", "load_file", "parse_value", "to_dict", "check", "check_ranges", "describe", "help_text"]


class ConfigError(ValueError):
    """A malformed config key or value."""


def _fields(cfg) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cfg)}


def _hints(cfg) -> dict[str, Any]:
    return typing.get_type_hints(type(cfg))


def parse_value(key: str, tp: Any, raw: Any) -> Any:
    """Parse ``raw`` (a string from the command line, or a JSON/TOML value) as type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null")):
            if type(None) in args:
                return None
        last = None
        for a in args:
            if a is type(None):
                continue
            try:
                return parse_value(key, a, raw)
            except ConfigError as e:
                last = e
        raise last or ConfigError(f"{key}: cannot parse {raw!r}")
    if origin is Literal:
        for a in args:
            if raw == a or str(raw) == str(a):
                return a
        raise ConfigError(f"{key}: {raw!r} is not allowed; choose one of {', '.join(map(str, args))}")
    if tp in (tuple, list, dict):
        raise ConfigError(f"{key}: the config declares a bare {tp.__name__} with no element type; "
                          f"annotate it (e.g. {tp.__name__}[str, ...]) so values can be parsed")
    if origin is dict:
        d = raw
        if isinstance(raw, str):
            try:
                d = json.loads(raw)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{key}: expected a JSON object like {{\"a\": 1}}, got {raw!r} ({e})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{key}: expected a JSON object like {{\"a\": 1}}, got {raw!r}")
        kt, vt = args if len(args) == 2 else (str, typing.Any)
        return {parse_value(key, kt, k): parse_value(f"{key}.{k}", vt, v) for k, v in d.items()}
    if origin in (tuple, list):
        items = raw
        if isinstance(raw, str):
            items = [s for s in raw.replace(" ", "").split(",") if s != ""]
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{key}: expected a comma-separated list, got {raw!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:  # fixed length, e.g. tuple[int, int]
            if len(items) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} comma-separated values, got {raw!r}")
            return tuple(parse_value(key, a, x) for a, x in zip(args, items))
        elem = args[0] if args else str
        vals = [parse_value(key, elem, x) for x in items]
        return tuple(vals) if origin is tuple else vals
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        s = str(raw).lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected a boolean (true/false), got {raw!r}")
    if tp is typing.Any:
        return raw
    if tp in (int, float) and isinstance(raw, bool):
        raise ConfigError(f"{key}: expected {tp.__name__}, got the boolean {raw!r}")
    if tp in (int, float, str):
        try:
            if tp is int and isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            value = tp(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {raw!r}") from None
        if tp is float and not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {raw!r}")
        return value
    return raw


def override(cfg, sets: list[str] | dict[str, Any]):
    """A copy of ``cfg`` with ``key=value`` overrides (strings) or a mapping applied."""
    items = sets.items() if isinstance(sets, dict) else [_split(s) for s in sets]
    fields, hints = _fields(cfg), _hints(cfg)
    changes = {}
    for key, raw in items:
        if key not in fields:
            raise ConfigError(f"unknown config key {key!r} for {type(cfg).__name__}; known keys: "
                              f"{', '.join(fields)}")
        changes[key] = parse_value(key, hints[key], raw)
    return check(dataclasses.replace(cfg, **changes))


def check(cfg):
    """Run the config's own ``validate()`` (if it has one); its errors become :class:`ConfigError`.
    Returns ``cfg``."""
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError:
            raise
        except (ValueError, TypeError) as e:  # an experiment's own check of its values
            raise ConfigError(f"{type(cfg).__name__}: {e}") from e
    return cfg


_RULES = {"positive": (lambda v: v > 0, "> 0"), "nonnegative": (lambda v: v >= 0, ">= 0"),
          "unit": (lambda v: 0 < v < 1, "in the open interval (0, 1)")}


def check_ranges(cfg, *, positive=(), nonnegative=(), unit=(), nonempty=()) -> None:
    """Raise :class:`ConfigError` naming key, value and what is allowed unless every key in
    ``positive`` is > 0, in ``nonnegative`` >= 0, in ``unit`` in (0, 1) (for a list: every entry)
    and every list in ``nonempty`` has an entry. NaN fails every rule (the comparisons are written
    so that it does), so a config built in Python cannot slip one through either.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class C:
        ...     steps: int = 0
        ...     widths: tuple[int, ...] = (8, 0)
        >>> check_ranges(C(steps=5), positive=("steps", "widths"))
        Traceback (most recent call last):
        ...
        dgmkd.config.ConfigError: widths=(8, 0) is not allowed: every entry must be > 0
    """
    for key in nonempty:
        if len(getattr(cfg, key)) == 0:
            raise ConfigError(f"{key}={getattr(cfg, key)!r} is not allowed: give at least one value")
    for rule, keys in (("positive", positive), ("nonnegative", nonnegative), ("unit", unit)):
        ok, allowed = _RULES[rule]
        for key in keys:
            value = getattr(cfg, key)
            many = isinstance(value, (tuple, list))
            for v in (value if many else (value,)):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v):
                    raise ConfigError(f"{key}={value!r} is not allowed: {'every entry ' if many else ''}must be "
                                      f"{allowed}")


def _split(s: str) -> tuple[str, str]:
    if "=" not in s:
        raise ConfigError(f"malformed override {s!r}: expected key=value")
    k, v = s.split("=", 1)
    return k.strip(), v.strip()


def load_file(cfg, path: str | Path):
    """Apply the keys of a JSON (``.json``) or TOML (``.toml``) file to ``cfg``."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    if path.suffix.lower() not in (".json", ".toml"):
        raise ConfigError(f"config file {str(path)!r}: {path.suffix or 'a file without a suffix'} is not supported "
                          "(YAML neither); write the keys as JSON (.json) or TOML (.toml)")
    try:
        text = path.read_text()
    except (UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"config file {str(path)!r} cannot be read as text: {e}") from None
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception as e:
        raise ConfigError(f"config file {str(path)!r} is malformed: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a table/object of key = value")
    return override(cfg, data)


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# meanings of keys that many experiments share (a field's own comment or ``metadata["help"]`` wins)
COMMON_HELP = {
    "seed": "base seed of every named random stream (dgmkd.harness.seed)",
    "seeds": "seeds to repeat the whole comparison over (tables show mean ± sample sd)",
    "progress": "progress bars (a terminal) or periodic log lines (a redirected log)",
    "threads": "torch CPU threads",
    "data_root": "directory holding the dataset files (for datasets that are not embedded)",
    "dataset": "which data set to use",
    "batch": "minibatch size",
    "lr": "learning rate",
    "steps": "optimization steps",
    "latent_weight": "weight of the latent loss (Eq. 6) in the unified loss (Eq. 7, Chen et al. 2023)",
    "latent_divergence": "divergence of the latent loss (kl, reverse_kl, w2, l2, l1)",
    "divergence": "divergence of the surrogate loss (kl, reverse_kl, w2, l2, l1)",
    "methods": "the methods compared",
    "eval_samples": "samples per model for evaluation",
    "teacher_steps": "teacher training steps",
    "student_steps": "student training (distillation) steps",
    "teacher_lr": "teacher learning rate",
    "student_lr": "student learning rate",
    "teacher_hidden": "teacher hidden width",
    "student_hidden": "student hidden width(s)",
    "scratch_steps": "training steps of the students trained from scratch (no teacher)",
    "distill_steps": "distillation steps",
    "distill_lr": "distillation learning rate",
    "grid": "sample grids are grid x grid images",
    "encoder_steps": "steps fitting a distilled student's encoder (inference network) on data afterwards",
    "warmup": "KL warm-up steps",
    "sigma": "standard deviation of the Gaussian pixel likelihood",
    "latent_dims": "latent sizes, top to bottom",
    "width": "channel width of the ladder VAE",
    "nll_k": "importance samples of the NLL estimate",
    "temperature": "softmax temperature of the KD loss (Hinton et al. 2015)",
    "device": "torch device (cpu, cuda, cuda:1, mps)",
    "distill_batch": "distillation batch size (data-free: samples per step)",
    "ws_batch": "wake-sleep minibatch size",
    "ws_lr": "wake-sleep learning rate",
    "grad_clip": "gradient-norm clip",
}


def _source_comments(cls) -> dict[str, str]:
    """Each field's comment in the class source: the ``# ...`` at the end of its line, or the
    ``#`` lines right above it."""
    import inspect
    import io
    import tokenize

    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    above: list[str] = []
    names = {f.name for f in dataclasses.fields(cls)}
    lines = src.splitlines()
    line_fields: dict[int, list[str]] = {}
    for i, line in enumerate(lines):
        s = line.split("#", 1)[0].strip()
        heads = [part.split(":", 1)[0].strip() for part in s.split(";") if ":" in part]
        heads = [h for h in heads if h in names]
        if heads:
            line_fields[i + 1] = heads
    comments: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
    except (tokenize.TokenError, IndentationError):
        return {}
    for i, line in enumerate(lines, 1):
        if line.strip().startswith("#"):
            above.append(comments.get(i, ""))
            continue
        heads = line_fields.get(i, [])
        text = comments.get(i) or " ".join(a for a in above if a)
        parts = [t.strip() for t in text.split(";")]
        for j, name in enumerate(heads):  # `a: int = 1; b: int = 2  # meaning of a; meaning of b`
            if text:
                out[name] = parts[j] if len(heads) > 1 and len(parts) == len(heads) else text
        above = []
    return out


def describe(cfg) -> list[tuple[str, str, str, str]]:
    """``(key, type, default, meaning)`` for every field of a config dataclass (or instance): the
    meaning is the field's ``metadata["help"]``, else the defining module's ``CONFIG_HELP[key]``,
    else its comment in the source (at the end of its line, or the comment lines right above it),
    else :data:`COMMON_HELP`, else ``""``.

    Example:
        >>> from dataclasses import dataclass, field
        >>> @dataclass
        ... class C:
        ...     steps: int = 10
        ...     width: int = field(default=8, metadata={"help": "hidden units"})
        >>> [(k, d, m) for k, _, d, m in describe(C)]
        [('steps', '10', 'optimization steps'), ('width', '8', 'hidden units')]
    """
    cls = cfg if isinstance(cfg, type) else type(cfg)
    hints = typing.get_type_hints(cls)
    comments = _source_comments(cls)
    import sys

    module_help = getattr(sys.modules.get(cls.__module__), "CONFIG_HELP", {})
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        tp = hints.get(f.name, f.type)
        tname = getattr(tp, "__name__", None) if typing.get_origin(tp) is None else None
        meaning = (f.metadata.get("help") or module_help.get(f.name) or comments.get(f.name)
                   or COMMON_HELP.get(f.name, ""))
        rows.append((f.name, tname or str(tp).replace("typing.", ""), _show(default), meaning))
    return rows


def _show(v) -> str:
    if isinstance(v, (tuple, list)):
        return ",".join(map(str, v)) if v else "(empty)"
    if isinstance(v, str):
        return repr(v) if v else "''"
    return str(v)


def help_text(cfg) -> str:
    """The config keys of an experiment as a plain-text table (``dgmkd run EXP --help``)."""
    rows = describe(cfg)
    w = max(len(f"{k}={d}") for k, _, d, _ in rows)
    out = ["config keys (--set KEY=VALUE; defaults shown):"]
    for k, t, d, m in rows:
        out.append(f"  {f'{k}={d}':{w}}  {m}{' ' if m else ''}[{t}]")
    return "\n".join(out)
