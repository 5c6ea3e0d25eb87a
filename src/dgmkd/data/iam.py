"""IAM On-Line Handwriting Database (IAM-OnDB) stroke XML reader, for users who have the files.

The VRNN experiment of Chen et al. 2023 (§3.6, §4.3, Fig. 8) uses IAM-OnDB (Liwicki & Bunke,
ICDAR 2005). The data set needs a registration and cannot be shipped or downloaded here, so the
library's embedded default for the VRNN is MNIST-1D (:mod:`dgmkd.data.mnist1d`); this module reads
the real files when a user has them (``lineStrokes/**/*.xml``), and :func:`iam_split` gives the
fixed-length train/test sequences of ``dgmkd run vrnn-compress --set dataset=iam --set data_root=DIR``.

Each file is a ``WhiteboardCaptureSession`` whose ``StrokeSet`` holds ``Stroke`` elements of
``Point x= y= time=`` children. Following Graves (2013) and Chung et al. (2015, VRNN), a line is
turned into a sequence of rows ``[pen_up, dx, dy]``: ``dx, dy`` the offset from the previous point
(0 for the first point), ``pen_up = 1`` at the last point of each stroke (the pen lifts after it).
The VRNN models ``pen_up`` as a Bernoulli and ``(dx, dy)`` as Gaussians. The y axis is flipped so
that the handwriting is upright when plotted (the whiteboard's y grows downwards).

Example (with a tiny file written on the spot):
    >>> import tempfile, pathlib
    >>> from dgmkd.data.iam import read_strokes
    >>> xml = ('<WhiteboardCaptureSession><StrokeSet>'
    ...        '<Stroke><Point x="10" y="20" time="0"/><Point x="13" y="24" time="1"/></Stroke>'
    ...        '<Stroke><Point x="20" y="20" time="2"/></Stroke></StrokeSet></WhiteboardCaptureSession>')
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a01-000u-01.xml"
    >>> _ = p.write_text(xml)
    >>> read_strokes(p).tolist()
    [[0.0, 0.0, 0.0], [1.0, 3.0, -4.0], [1.0, 7.0, 4.0]]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import DataFormatError

__all__ = ["read_strokes", "load_iam", "iam_split", "IAMFormatError", "strokes_to_lines"]


class IAMFormatError(DataFormatError):
    """A file that is not an IAM-OnDB stroke XML file (a :class:`~dgmkd.data.errors.DataFormatError`)."""


def _points(path: Path) -> list[list[tuple[float, float, int]]]:
    """The strokes of a lineStrokes file as lists of ``(x, y, line number)``, parsed in one streaming
    pass (expat) so that every error names the line of the offending element.

    Only the ``StrokeSet`` that is the root or a child of the root counts, and only its ``Stroke``
    children and their ``Point`` children, as in the published files."""
    from xml.parsers import expat

    parser = expat.ParserCreate()
    stack: list[str] = []
    strokes: list[list[tuple[float, float, int]]] = []
    found = [False]

    def start(tag, attrib):
        stack.append(tag)
        depth, line = len(stack), parser.CurrentLineNumber
        in_set = (depth == 1 and tag == "StrokeSet") or (depth == 2 and tag == "StrokeSet")
        if in_set:
            found[0] = True
            return
        parent_set = stack[0] == "StrokeSet" and depth == 2 or depth == 3 and stack[1] == "StrokeSet"
        if tag == "Stroke" and parent_set:
            strokes.append([])
        elif tag == "Point" and stack[-2] == "Stroke" and (depth == 3 and stack[0] == "StrokeSet"
                                                          or depth == 4 and stack[1] == "StrokeSet"):
            k = len(strokes) - 1
            try:
                x, y = float(attrib["x"]), float(attrib["y"])
            except KeyError as e:
                raise IAMFormatError(f"{path} line {line}: a <Point> of stroke {k} has no {e.args[0]!r} "
                                     "attribute") from None
            except ValueError:
                raise IAMFormatError(f"{path} line {line}: a <Point> of stroke {k} has a non-numeric coordinate: "
                                     f"{attrib}") from None
            if not (np.isfinite(x) and np.isfinite(y)):
                raise IAMFormatError(f"{path} line {line}: a <Point> of stroke {k} has the coordinate "
                                     f"x={attrib['x']!r}, y={attrib['y']!r}; coordinates must be finite numbers")
            strokes[-1].append((x, y, line))

    parser.StartElementHandler = start
    parser.EndElementHandler = lambda tag: stack.pop()
    try:
        with open(path, "rb") as f:
            parser.ParseFile(f)
    except expat.ExpatError as e:
        raise IAMFormatError(f"{path} line {e.lineno}: not well-formed XML ({expat.ErrorString(e.code)})") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"IAM-OnDB stroke file {str(path)!r} does not exist") from None
    if not found[0]:
        raise IAMFormatError(f"{path}: no <StrokeSet> element; is this an IAM-OnDB lineStrokes file?")
    return strokes


def read_strokes(path: str | Path) -> np.ndarray:
    """One IAM-OnDB line as a ``(T, 3)`` float array of rows ``[pen_up, dx, dy]`` (see module doc).

    A missing or non-numeric coordinate, NaN or inf, and offsets that overflow are
    :class:`IAMFormatError` naming the file and line."""
    path = Path(path)
    points, pen, lines = [], [], []
    for stroke in _points(path):
        for i, (x, y, line) in enumerate(stroke):
            points.append((x, y))
            lines.append(line)
            pen.append(1.0 if i == len(stroke) - 1 else 0.0)
    if not points:
        raise IAMFormatError(f"{path}: the <StrokeSet> holds no <Point>")
    xy = np.asarray(points, dtype=np.float64)
    d = np.zeros_like(xy)
    d[1:] = xy[1:] - xy[:-1]
    d[1:, 1] *= -1.0  # upright: the whiteboard's y axis points down
    out = np.concatenate([np.asarray(pen)[:, None], d], 1)
    bad = np.flatnonzero(~(np.abs(out) <= np.finfo(np.float32).max).all(1))
    if len(bad):
        raise IAMFormatError(f"{path} line {lines[bad[0]]}: the offset from the previous point, "
                             f"{d[bad[0]].tolist()}, does not fit a float32; coordinates must be moderate numbers")
    return out.astype(np.float32)


def _stroke_files(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"IAM-OnDB directory {str(root)!r} does not exist (expected lineStrokes/)")
    files = sorted(root.rglob("*.xml"))
    if not files:
        raise FileNotFoundError(f"no *.xml stroke files under {str(root)!r}")
    return files


def _windows(files: list[Path], max_len: int, min_len: int, scale: float | None, where: str):
    if max_len < min_len or min_len < 1:
        raise ValueError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    pieces = []
    for f in files:
        s = read_strokes(f)
        for i in range(0, len(s), max_len):
            w = s[i:i + max_len].copy()
            if len(w) >= min_len:
                w[0, 1:] = 0.0  # each window starts at its own origin
                pieces.append(w)
    if not pieces:
        raise DataFormatError(f"no stroke sequence {where} has at least {min_len} points")
    if scale is None:
        offs = np.concatenate([p[:, 1:] for p in pieces]).astype(np.float64)
        scale = float(offs.std()) or 1.0
        if not np.isfinite(scale):
            raise DataFormatError(f"the pen offsets {where} have no finite standard deviation; are the coordinates "
                                  "moderate numbers?")
    x = torch.zeros(len(pieces), max_len, 3)
    lengths = torch.zeros(len(pieces), dtype=torch.long)
    for i, p in enumerate(pieces):
        p = p.copy()
        p[:, 1:] /= scale
        x[i, :len(p)] = torch.from_numpy(p)
        lengths[i] = len(p)
    return x, lengths, scale


def load_iam(root: str | Path, max_len: int = 300, min_len: int = 10, scale: float | None = None,
             limit: int | None = None):
    """Read every ``*.xml`` under ``root`` (recursively, sorted) into a padded tensor.

    Sequences are cut into windows of at most ``max_len`` points (longer lines give several; pieces
    shorter than ``min_len`` are dropped). Offsets are divided by ``scale`` (default: their standard
    deviation over all files, the usual normalization). Returns ``(x, lengths, scale)`` with ``x`` of
    shape ``(N, max_len, 3)`` zero-padded, ``lengths`` ``(N,)``.
    """
    files = _stroke_files(root)[:limit]
    return _windows(files, max_len, min_len, scale, f"under {str(root)!r}")


def iam_split(root: str | Path, seq_len: int, test_fraction: float = 0.2,
              generator: torch.Generator | None = None) -> dict:
    """Fixed-length IAM-OnDB sequences split into train and test *by line file*.

    Every line is cut into windows of exactly ``seq_len`` points (the shorter last piece of a line
    is dropped, so no padding or mask is needed). A random ``test_fraction`` of the files (at least
    one, and at least one left for training) gives the test windows, so windows of one line never
    straddle the split. Offsets are scaled by the training windows' standard deviation. Returns
    ``{"x", "x_test"}`` of shape ``(N, seq_len, 3)`` (rows ``[pen_up, dx, dy]``) and ``"scale"``.
    """
    files = _stroke_files(root)
    if len(files) < 2:
        raise DataFormatError(f"a train/test split needs at least 2 stroke files under {str(root)!r}, found {len(files)}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    perm = torch.randperm(len(files), generator=generator).tolist()
    n_test = min(len(files) - 1, max(1, round(test_fraction * len(files))))
    test, train = sorted(files[i] for i in perm[:n_test]), sorted(files[i] for i in perm[n_test:])
    x, _, scale = _windows(train, seq_len, seq_len, None, f"in the {len(train)} training files")
    x_test, _, _ = _windows(test, seq_len, seq_len, scale, f"in the {len(test)} test files")
    return {"x": x, "x_test": x_test, "scale": scale}


def strokes_to_lines(seq: np.ndarray | torch.Tensor) -> list[np.ndarray]:
    """Integrate ``[pen_up, dx, dy]`` rows back to absolute coordinates, split into strokes (for plots)."""
    seq = np.asarray(seq, dtype=np.float64)
    if seq.ndim != 2 or seq.shape[1] != 3:
        raise ValueError(f"expected a (T, 3) array of [pen_up, dx, dy], got shape {seq.shape}")
    xy = np.cumsum(seq[:, 1:], 0)
    cuts = np.nonzero(seq[:, 0] > 0.5)[0] + 1
    return [s for s in np.split(xy, cuts) if len(s)]
