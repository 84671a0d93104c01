"""The quality benchmark (bench/quality.py): the quick run on the fast toy world (~20 s once it is built), the
best-dev-checkpoint path with a planted best epoch, and the rows resolved from others' results."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import dskd_core.training.evaluation as training_evaluation
from bench.quality import QUICK_BUDGET, QUICK_ROWS, Row, main, resolve_walltime, run_one, wall_time
from bench.quality_report import COLUMNS, compare, criteria


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
        assert row["train_s"] > 0 and row["eval_s"] > 0 and row["wall_s"] >= row["train_s"]
        # One dev generation per epoch; the best one is the exported checkpoint's score.
        assert len(row["curve"]) == row["epochs"]
        assert row["dev_rougeL"]["mean"] == max(c["dev_rougeL"]["mean"] for c in row["curve"])
    for name in ("teacher", "student", "cross_student"):
        assert math.isfinite(summary["references"][name]["test_rougeL"])
    # The KD rows read the teacher from the cache the bench filled (and timed) before the runs.
    assert summary["cache_fill_s"]["student"] > 0
    # The wall-time row is SFT given the wall time of the best KD row: at least the main rows' epochs.
    walltime = rows[-1]
    assert walltime["info"]["source_row"] in {"vanilla_kd_fkl", "dskd_v2_ideal"}
    assert walltime["epochs"] == int(
        QUICK_BUDGET.epochs * walltime["info"]["source_wall_s"] / walltime["info"]["sft_wall_s"]
    )

    # A second run with the same settings reuses every finished run (and the reference scores).
    logged = (out / "runs.jsonl").read_text()
    again = main(["--quick", "--world", str(toy_world.root), "--out", str(out)])
    assert (out / "runs.jsonl").read_text() == logged
    assert [r["name"] for r in again["rows"]] == [r["name"] for r in rows]
    assert [r["test_rougeL"] for r in again["rows"]] == [r["test_rougeL"] for r in rows]
    # --report-only trains nothing: the same table from the recorded runs; an empty directory has none.
    report = main(["--quick", "--world", str(toy_world.root), "--out", str(out), "--report-only"])
    assert [r["test_rougeL"] for r in report["rows"]] == [r["test_rougeL"] for r in rows]
    empty = main(
        ["--quick", "--world", str(toy_world.root), "--out", str(tmp_path / "empty"), "--report-only"]
    )
    assert {r["status"] for r in empty["rows"]} == {"not run"} and not (tmp_path / "empty" / "runs").exists()

    table = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")]
    header = next(line for line in table if line.startswith("| config |"))
    assert [c.strip() for c in header.strip("|").split("|")] == list(COLUMNS)
    start = table.index(header) + 1
    body = table[start : start + 3 + len(QUICK_ROWS)]  # teacher, two untrained students, one line per row
    assert all(len(line.strip("|").split("|")) == len(COLUMNS) for line in body)
    assert "## Dev Rouge-L per epoch" in (out / "results.md").read_text()
    assert "## Equal wall time" in (out / "results.md").read_text()


def test_best_dev_epoch_is_the_exported_checkpoint(toy_world, tmp_path, monkeypatch):
    """Planted dev scores (epoch 2 best of 3): the bench reports epoch 2 and tests the weights of epoch 2."""
    planted, seen = [10.0, 40.0, 20.0], []

    def fake_dev_generation(student, tokenizer, records, spec):
        seen.append({k: v.detach().clone() for k, v in student.state_dict().items()})
        value = planted[len(seen) - 1]
        return {
            "dev_rougeL": value,
            "dev_rougeL_std": 0.0,
            "dev_exact_match": 0.0,
            "dev_exact_match_std": 0.0,
        }

    monkeypatch.setattr(training_evaluation, "dev_generation", fake_dev_generation)
    budget = QUICK_BUDGET.__class__(**{**QUICK_BUDGET.__dict__, "epochs": 3})
    record = run_one(toy_world, Row("sft", "sft"), budget, 0, tmp_path / "runs", tmp_path / "cache")

    assert record["status"] == "ok", record
    steps_per_epoch = math.ceil(budget.train_examples / budget.batch_size)
    assert [c["dev_rougeL"] for c in record["curve"]] == planted
    assert [c["step"] for c in record["curve"]] == [steps_per_epoch * e for e in (1, 2, 3)]
    assert record["best_epoch"] == 2 and record["best_step"] == 2 * steps_per_epoch
    assert record["dev_rougeL"] == 40.0
    exported = load_file(tmp_path / "runs" / "sft-seed0" / "export" / "model.safetensors")
    keys = [k for k in exported if k in seen[1]]
    assert len(keys) >= len(seen[1]) - 1  # all but a tied head
    for k in keys:
        torch.testing.assert_close(exported[k], seen[1][k])
    assert any(not torch.equal(exported[k], seen[2][k]) for k in keys)  # not the last epoch's weights


def _run(row: str, seed: int, *, method: str, student: str = "student", **values) -> dict:
    return {
        "row": row,
        "seed": seed,
        "method": method,
        "student": student,
        "overrides": values.pop("overrides", {}),
        "status": "ok",
        **values,
    }


def test_walltime_row_gets_the_epochs_that_fit_into_the_best_kd_rows_time():
    rows = [
        Row("sft", "sft"),
        Row("kd_a", "vanilla_kd"),
        Row("kd_b", "dskd"),
        Row("wt", "sft", walltime_of="student"),
        Row("wt_dskd", "sft", walltime_of="student", walltime_pick="best_dskd"),
    ]
    records = [
        *(_run("sft", s, method="sft", train_s=10.0, dev_rougeL=50.0) for s in (0, 1)),
        *(_run("kd_a", s, method="vanilla_kd", train_s=14.0, dev_rougeL=60.0) for s in (0, 1)),
        *(_run("kd_b", s, method="dskd", train_s=29.0, dev_rougeL=55.0) for s in (0, 1)),
        _run("kd_b", 2, method="dskd", train_s=1.0, dev_rougeL=99.0, overrides={"x": 1}),  # other settings
    ]
    budget = QUICK_BUDGET.__class__(**{**QUICK_BUDGET.__dict__, "epochs": 10})
    fills = {"student": 6.0}
    assert wall_time(rows[0], records, fills) == 10.0  # SFT pays no teacher
    assert wall_time(rows[1], records, fills) == 20.0  # 14 s + the cache fill
    best = resolve_walltime(rows[3], rows, records, budget, fills)
    assert best.overrides == {"training.epochs": 20} and best.info["source_row"] == "kd_a"
    dskd = resolve_walltime(rows[4], rows, records, budget, fills)
    assert dskd.overrides == {"training.epochs": 35} and dskd.info["source_row"] == "kd_b"
    assert isinstance(resolve_walltime(rows[3], rows, records[2:], budget, fills), str)  # no SFT finished


def test_seqkd_wall_time_counts_its_one_teacher_generation():
    row = Row("seqkd", "seqkd")
    records = [
        _run("seqkd", 0, method="seqkd", train_s=50.0, seqkd_generated=True),
        _run("seqkd", 1, method="seqkd", train_s=10.0, seqkd_generated=False),
        _run("seqkd", 2, method="seqkd", train_s=12.0, seqkd_generated=False),
    ]
    assert wall_time(row, records, {}) == pytest.approx(50.0)


def test_criteria_pick_on_dev_and_judge_on_test_against_the_pooled_std():
    def row(name, method, dev, test, std, student="student"):
        return {
            "name": name,
            "method": method,
            "student": student,
            "dev_rougeL": {"mean": dev, "std": 0.0},
            "test_rougeL": {"mean": test, "std": std},
        }

    summary = {
        "rows": [
            row("sft", "sft", 50, 50, 1.0),
            row("vanilla_kd_fkl", "vanilla_kd", 55, 52, 2.0),
            row("vanilla_kd_rkl", "vanilla_kd", 54, 60, 0.0),  # better on test, worse on dev: not picked
            row("dskd_v2_ideal", "dskd", 56, 51, 1.0),
        ]
    }
    checks = {c["claim"]: c for c in criteria(summary)}
    vanilla = checks["vanilla KD beats SFT"]
    assert vanilla["a"] == "vanilla_kd_fkl" and vanilla["diff"] == 2.0
    assert vanilla["pooled_std"] == pytest.approx(math.sqrt(2.5)) and vanilla["beats"]
    assert not checks["DSKD beats vanilla KD"]["beats"]
    assert compare(summary["rows"][0], summary["rows"][0])["beats"] is False


def test_unavailable_configuration_is_a_row_not_a_crash(toy_world, tmp_path):
    from bench.quality import run_bench

    rows = [Row("needs_a_missing_setting", "sft", overrides={"distill.no_such_setting": 1})]
    summary = run_bench(toy_world, rows, QUICK_BUDGET, tmp_path, say=lambda _: None, references=False)
    (row,) = summary["rows"]
    assert row["status"].startswith("not run: spec rejects the settings (distill.no_such_setting")
    assert row["seeds"] == 0 and "dev_rougeL" not in row
