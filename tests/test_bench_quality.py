"""Smoke test of the quality benchmark (bench/quality.py --quick) on the fast toy world: ~15 s once it is built."""

from __future__ import annotations

import json
import math

from bench.quality import QUICK_ROWS, Row, main
from bench.quality_report import COLUMNS


def test_quick_bench_writes_a_well_formed_table(toy_world, tmp_path):
    out = tmp_path / "quality"
    summary = main(["--quick", "--world", str(toy_world.root), "--out", str(out)])

    assert {p.name for p in out.iterdir()} >= {"results.md", "results.json", "quality.png", "runs.jsonl"}
    assert (out / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "results.json").read_text())["rows"] == summary["rows"]

    rows = summary["rows"]
    assert [r["name"] for r in rows] == [r.name for r in QUICK_ROWS]
    for row in rows:
        assert row["status"] == "ok", row
        assert row["seeds"] == 1
        for metric in ("dev_rougeL", "test_rougeL", "dev_em", "test_em"):
            assert 0.0 <= row[metric]["mean"] <= 100.0 and row[metric]["std"] == 0.0  # one seed: no spread
        assert row["train_s"] > 0 and row["eval_s"] > 0
    for name in ("teacher", "student", "cross_student"):
        assert math.isfinite(summary["references"][name]["test_rougeL"])

    # A second run with the same settings reuses every finished run (and the reference scores).
    logged = (out / "runs.jsonl").read_text()
    again = main(["--quick", "--world", str(toy_world.root), "--out", str(out)])
    assert (out / "runs.jsonl").read_text() == logged
    assert again["rows"] == rows

    table = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("|")]
    header, _separator, *body = table
    assert [c.strip() for c in header.strip("|").split("|")] == list(COLUMNS)
    assert len(body) == 3 + len(QUICK_ROWS)  # teacher, two untrained students, one line per configuration
    assert all(len(line.strip("|").split("|")) == len(COLUMNS) for line in body)


def test_unavailable_configuration_is_a_row_not_a_crash(toy_world, tmp_path):
    from bench.quality import QUICK_BUDGET, run_bench

    rows = [Row("needs_a_missing_setting", "sft", overrides={"distill.no_such_setting": 1})]
    summary = run_bench(toy_world, rows, QUICK_BUDGET, tmp_path, say=lambda _: None, references=False)
    (row,) = summary["rows"]
    assert row["status"].startswith("not run: spec rejects the settings (distill.no_such_setting")
    assert row["seeds"] == 0 and "dev_rougeL" not in row
