"""Smoke test of the throughput benchmark (bench/throughput.py --quick): it runs every setting and prints ratios."""

from __future__ import annotations

import json
import math

from bench.throughput import METHODS, main


def test_quick_throughput_bench_prints_ratios_to_sft(toy_world, tmp_path, capsys):
    log = tmp_path / "throughput.jsonl"
    summary = main(["--quick", "--world-dir", str(toy_world.root), "--log", str(log)])
    out = capsys.readouterr().out

    names = [r["setting"] for r in summary["rows"]]
    assert names == ["sft", "sft cross"] + [f"{m} {kind}" for m in METHODS for kind in ("live", "cache")]
    by_name = {r["setting"]: r for r in summary["rows"]}
    for baseline in ("sft", "sft cross"):  # each student's SFT is its own baseline
        assert by_name[baseline]["wall_ratio"] == by_name[baseline]["cpu_ratio"] == 1.0
    assert by_name["dskd_eta cache"]["baseline"] == "sft cross" and by_name["dskd cache"]["baseline"] == "sft"
    for row in summary["rows"]:
        assert row["s_per_step"] > 0 and row["tokens_per_s"] > 0
        assert math.isfinite(row["wall_ratio"]) and row["wall_ratio"] > 0
        assert row["setting"] in out
    # The first cached setting builds the cache; the others read the same teacher states (dskd_eta's teacher
    # side is the teacher's own tokenisation of the same text).
    assert by_name["vanilla_kd cache"]["cache"] == "built"
    assert by_name["dskd cache"]["cache"] == "hit"
    assert by_name["dskd_eta cache"]["cache"] in ("hit", "extended")
    for method in METHODS:
        cache = summary["cache"][method]
        assert cache["cache_bytes_per_token"] >= 4 * cache["hidden_size"]  # fp32 payload plus the header
        assert f"target {method} with a warm cache" in out
    assert "bytes per teacher token" in out
    assert json.loads(log.read_text().splitlines()[-1])["rows"] == summary["rows"]
