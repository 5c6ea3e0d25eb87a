"""The experiment harness: seed streams, sweeps, the spread convention, writers and checked readers."""

import math

import pytest
import torch

from dgmkd import harness


def test_seed_streams_are_stable_distinct_and_in_range():
    s = {harness.seed(b, name, k) for b in range(3) for name in ("init", "eval", "data") for k in range(5)}
    assert len(s) == 45 and all(0 <= v < 2 ** 31 - 1 for v in s)
    assert harness.seed(0, "init") == harness.seed(0, "init")
    a = harness.generator(1, "x")
    b = harness.generator(1, "x")
    assert torch.equal(torch.rand(5, generator=a), torch.rand(5, generator=b))


def test_summarize_uses_sample_sd_and_shows_no_spread_for_one_seed():
    rows = [{"m": "a", "v": 1.0}, {"m": "a", "v": 2.0}, {"m": "a", "v": 6.0}, {"m": "b", "v": 5.0}]
    a, b = harness.summarize(rows, ("m",), ("v",))
    assert a["v_mean"] == 3.0 and math.isclose(a["v_sd"], math.sqrt(7.0)) and a["n"] == 3
    assert (a["v_min"], a["v_max"]) == (1.0, 6.0)
    assert math.isnan(b["v_sd"]) and harness.cell(b, "v") == "5.000"
    assert harness.cell(a, "v", 2) == "3.00 ± 2.65"


def test_sweep_is_the_product_in_order():
    rows = harness.sweep(lambda seed, size: {"x": seed * 10 + size}, seed=(0, 1), size=(1, 2), log=None)
    assert [(r["seed"], r["size"], r["x"]) for r in rows] == [(0, 1, 1), (0, 2, 2), (1, 1, 11), (1, 2, 12)]


def test_csv_round_trip_and_damaged_files(tmp_path):
    rows = [{"a": 1, "b": 0.1 + 0.2, "c": "x", "d": None}, {"a": 2, "b": 1e-30, "c": "y", "d": True}]
    p = harness.write_csv(tmp_path / "r.csv", rows)
    assert harness.read_csv(p) == rows
    p.write_text("a,b\n")
    with pytest.raises(harness.ReportDataError, match="no rows"):
        harness.read_csv(p)
    p.write_text("a,b\n1\n")
    with pytest.raises(harness.ReportDataError, match="line 2"):
        harness.read_csv(p)
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(harness.ReportDataError, match="not a text CSV"):
        harness.read_csv(p)
    with pytest.raises(harness.ReportDataError, match="missing"):
        harness.read_csv(tmp_path / "nope.csv")
    with pytest.raises(harness.ReportDataError, match="lacks the column"):
        harness.write_csv(p, rows)
        harness.read_csv(p, required=("zz",))
    (tmp_path / "j.json").write_text('{"a": ')
    with pytest.raises(harness.ReportDataError, match="j.json"):
        harness.read_json(tmp_path / "j.json")


def test_table_and_image_grid(tmp_path):
    lines = harness.table(["a", "b"], [[1, None], ["x", 2.5]])
    assert lines == ["| a | b |", "|---|---|", "| 1 | — |", "| x | 2.5 |"]
    with pytest.raises(ValueError, match="3 cells for 2 columns"):
        harness.table(["a", "b"], [[1, 2, 3]])
    p = harness.image_grid(torch.rand(20, 1, 8, 8), tmp_path / "g.png", n=4, title="t")
    q = harness.image_grid({"a": torch.rand(9, 3, 8, 8), "b": torch.rand(9, 3, 8, 8)}, tmp_path / "h.png", n=3)
    assert p.stat().st_size > 500 and q.stat().st_size > 500
    with pytest.raises(ValueError, match="N, C, H, W"):
        harness.image_grid(torch.rand(4, 8, 8), tmp_path / "x.png")


def test_written_files_follow_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        p = harness.write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o644
