"""Old Faithful (embedded) and the IAM-OnDB stroke XML reader (on fixtures written here)."""

import numpy as np
import pytest
import torch

from dgmkd.data.faithful import load_faithful, split_faithful
from dgmkd.data.iam import IAMFormatError, iam_split, load_iam, read_strokes, strokes_to_lines


def test_faithful_matches_its_known_summary():
    x = load_faithful(torch.float64)
    assert x.shape == (272, 2)
    # R: mean(faithful$eruptions) = 3.487783, mean(faithful$waiting) = 70.89706
    assert abs(float(x[:, 0].mean()) - 3.487783) < 1e-6
    assert abs(float(x[:, 1].mean()) - 70.897059) < 1e-5
    assert float(x[:, 0].min()) == 1.6 and float(x[:, 0].max()) == 5.1
    assert float(x[:, 1].min()) == 43 and float(x[:, 1].max()) == 96
    assert x[0].tolist() == [3.6, 79.0] and x[-1].tolist() == [4.467, 74.0]


def test_faithful_split_is_disjoint_standardized_and_reproducible():
    tr, te, (mean, std) = split_faithful(72, seed=0)
    assert tr.shape == (200, 2) and te.shape == (72, 2)
    assert torch.allclose(tr.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(tr.std(0), torch.ones(2), atol=1e-5)
    raw = torch.cat([tr, te]) * std + mean
    assert torch.allclose(raw.sum(0), load_faithful().sum(0), rtol=1e-5)
    tr2, te2, _ = split_faithful(72, seed=0)
    assert torch.equal(te, te2)
    with pytest.raises(ValueError, match="n_test"):
        split_faithful(0)


LINE = """<?xml version="1.0" encoding="ISO-8859-1"?>
<WhiteboardCaptureSession>
  <WhiteboardDescription><SensorLocation corner="top_left"/>
    <DiagonallyOppositeCoords x="6512" y="1376"/></WhiteboardDescription>
  <StrokeSet>
    <Stroke colour="black" start_time="769.05" end_time="769.64">
      <Point x="1073" y="1058" time="769.05"/>
      <Point x="1072" y="1085" time="769.07"/>
      <Point x="1074" y="1100" time="769.08"/>
    </Stroke>
    <Stroke colour="black" start_time="770.00" end_time="770.10">
      <Point x="1100" y="1050" time="770.00"/>
      <Point x="1110" y="1060" time="770.10"/>
    </Stroke>
  </StrokeSet>
</WhiteboardCaptureSession>
"""


def test_read_strokes_offsets_and_pen_bits(tmp_path):
    p = tmp_path / "a01-000u-01.xml"
    p.write_text(LINE, encoding="iso-8859-1")
    s = read_strokes(p)
    assert s.dtype == np.float32 and s.shape == (5, 3)
    assert s[:, 0].tolist() == [0, 0, 1, 0, 1]          # pen lifts after each stroke's last point
    assert s[:, 1].tolist() == [0, -1, 2, 26, 10]        # dx
    assert s[:, 2].tolist() == [0, -27, -15, 50, -10]    # -dy (upright)
    lines = strokes_to_lines(s)
    assert [len(l) for l in lines] == [3, 2]
    # integrating the offsets gives the points back (relative to the first, y flipped)
    assert lines[1][-1].tolist() == [1110 - 1073, -(1060 - 1058)]


def test_load_iam_windows_padding_and_scale(tmp_path):
    d = tmp_path / "lineStrokes" / "a01" / "a01-000"
    d.mkdir(parents=True)
    (d / "a01-000u-01.xml").write_text(LINE)
    pts = "".join(f'<Point x="{i}" y="{2 * i}" time="{i}"/>' for i in range(25))
    (d / "a01-000u-02.xml").write_text(f"<WhiteboardCaptureSession><StrokeSet><Stroke>{pts}</Stroke>"
                                       "</StrokeSet></WhiteboardCaptureSession>")
    x, lengths, scale = load_iam(tmp_path / "lineStrokes", max_len=10, min_len=3)
    # file 1: 5 points -> 1 window; file 2: 25 points -> windows of 10, 10, 5
    assert lengths.tolist() == [5, 10, 10, 5]
    assert x.shape == (4, 10, 3)
    assert float(x[0, 5:].abs().sum()) == 0.0                       # zero padding
    assert torch.all(x[:, 0, 1:] == 0)                              # each window starts at its origin
    assert abs(float(x[2, 1, 1]) - 1.0 / scale) < 1e-6              # dx = 1 scaled
    x2, _, s2 = load_iam(tmp_path / "lineStrokes", max_len=10, min_len=3, scale=2.0)
    assert s2 == 2.0 and abs(float(x2[2, 1, 2]) + 1.0) < 1e-6       # -dy = -2 / 2


def test_iam_reader_errors(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<WhiteboardCaptureSession><StrokeSet><Stroke><Point x='1'/></Stroke></StrokeSet>"
                   "</WhiteboardCaptureSession>")
    with pytest.raises(IAMFormatError, match="'y'"):
        read_strokes(bad)
    bad.write_text("<html></html>")
    with pytest.raises(IAMFormatError, match="StrokeSet"):
        read_strokes(bad)
    bad.write_text("<WhiteboardCaptureSession><StrokeSet>")
    with pytest.raises(IAMFormatError, match="well-formed"):
        read_strokes(bad)
    with pytest.raises(FileNotFoundError):
        read_strokes(tmp_path / "missing.xml")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no \\*.xml"):
        load_iam(empty)


def _iam_lines(root, n=6, points=25):
    """``LINE`` plus ``n - 1`` lines of three wavy strokes each, as IAM-OnDB lineStrokes files."""
    d = root / "lineStrokes" / "a01" / "a01-000"
    d.mkdir(parents=True)
    (d / "a01-000u-00.xml").write_text(LINE)
    for k in range(1, n):
        strokes = "".join("<Stroke>" + "".join(f'<Point x="{100 * s + 7 * i}" y="{int(30 * np.sin(i / (k + 1)))}" '
                                               f'time="{i}"/>' for i in range(points // 3)) + "</Stroke>"
                          for s in range(3))
        (d / f"a01-000u-{k:02d}.xml").write_text(f"<WhiteboardCaptureSession><StrokeSet>{strokes}</StrokeSet>"
                                                 "</WhiteboardCaptureSession>")
    return root / "lineStrokes"


def test_iam_split_by_file_fixed_length_train_scale(tmp_path):
    root = _iam_lines(tmp_path)
    d = iam_split(root, seq_len=5, test_fraction=0.2, generator=torch.Generator().manual_seed(0))
    assert d["x"].shape[1:] == (5, 3) and d["x_test"].shape[1:] == (5, 3)
    # 6 files -> 1 test file; LINE gives one window of 5, each wavy line (24 points) four
    assert len(d["x"]) + len(d["x_test"]) == 1 + 5 * 4 and len(d["x_test"]) in (1, 4)
    assert abs(float(d["x"][..., 1:].std()) - 1.0) < 0.1  # offsets scaled by the training windows' std
    assert torch.equal(iam_split(root, 5, generator=torch.Generator().manual_seed(0))["x"], d["x"])
    with pytest.raises(ValueError, match="test_fraction"):
        iam_split(root, 5, test_fraction=1.0)


def test_vrnn_compress_runs_on_iam_strokes(tmp_path):
    from dgmkd.cli import main
    from dgmkd.experiments import get

    root, out = _iam_lines(tmp_path), tmp_path / "run"
    sets = {**get("vrnn-compress").TEST, "dataset": "iam", "data_root": str(root), "seq_len": 5}
    args = ["run", "vrnn-compress", "--quick", "--quiet", "--out", str(out)]
    for k, v in sets.items():
        args += ["--set", f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"]
    assert main(args) == 0
    text = (out / "report.md").read_text()
    assert "IAM-OnDB" in text and "flattened 5x3 windows" in text
    (out / "report.md").unlink()
    assert main(["report", str(out), "--out", str(tmp_path / "cmp.md")]) == 0
    assert (out / "report.md").read_text() == text


def test_iam_nan_inf_or_overflowing_coordinates_name_file_and_line(tmp_path):
    from dgmkd.data import DataFormatError

    bad = tmp_path / "a01-000u-00.xml"
    for x, msg in (("nan", "coordinates must be finite"), ("-inf", "coordinates must be finite"),
                   ("1e300", "does not fit a float32")):
        bad.write_text("<WhiteboardCaptureSession>\n<StrokeSet>\n<Stroke>\n"
                       '<Point x="1" y="2" time="0"/>\n'
                       f'<Point x="{x}" y="3" time="1"/>\n'
                       "</Stroke>\n</StrokeSet>\n</WhiteboardCaptureSession>\n")
        with pytest.raises(DataFormatError, match=f"a01-000u-00.xml line 5: .*{msg}"):
            read_strokes(bad)
    # a NaN in one file of a set must stop the set, not turn every window's scale into NaN
    root = _iam_lines(tmp_path / "set")
    f = sorted(root.rglob("*.xml"))[2]
    f.write_text(f.read_text().replace('x="107"', 'x="nan"', 1))
    with pytest.raises(IAMFormatError, match=f"{f.name} line 1"):
        iam_split(root, seq_len=5, generator=torch.Generator().manual_seed(0))


def test_iam_parse_errors_and_empty_splits_are_data_format_errors(tmp_path):
    from dgmkd.data import DataFormatError

    bad = tmp_path / "b.xml"
    bad.write_bytes(b"<WhiteboardCaptureSession>\n<StrokeSet>\n\xff\xfe\x00</StrokeSet>")
    with pytest.raises(DataFormatError, match="b.xml line 3: not well-formed"):
        read_strokes(bad)
    root = _iam_lines(tmp_path / "short", n=3, points=6)  # lines of 6 points: no window of 50
    with pytest.raises(DataFormatError, match="no stroke sequence in the 2 training files has at least 50"):
        iam_split(root, seq_len=50, generator=torch.Generator().manual_seed(0))
