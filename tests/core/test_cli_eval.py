"""`dskd eval MODEL_DIR DATA`: Rouge-L and exact match, mean ± std over seeds, on a tiny saved model."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from dskd_cli.main import app
from dskd_core.evaluate import run_eval
from dskd_core.spec import EvalSpec

runner = CliRunner()


def numbers(output: str, label: str) -> tuple[float, float]:
    match = re.search(rf"^{label}: ([\d.]+) ± ([\d.]+)$", output, re.MULTILINE)
    assert match, output
    return float(match[1]), float(match[2])


def test_eval_prints_rouge_l_and_exact_match(toy_world):
    args = [
        "eval",
        str(toy_world.student),
        str(toy_world.dev),
        "--max-examples",
        "4",
        "--max-new-tokens",
        "12",
    ]
    greedy = runner.invoke(app, [*args, "--greedy", "--device", "cpu"])
    assert greedy.exit_code == 0, greedy.output
    assert "4 examples, greedy" in greedy.output
    expected = run_eval(
        toy_world.student,
        toy_world.dev,
        EvalSpec(do_sample=False, max_examples=4, max_new_tokens=8),
        device="cpu",
    )
    assert numbers(greedy.output, "Rouge-L") == (round(expected.rougeL.mean, 2), 0.0)
    assert numbers(greedy.output, "exact match") == (round(expected.exact_match.mean, 2), 0.0)

    sampled = runner.invoke(app, [*args, "--seeds", "1,2", "--device", "cpu"])
    assert sampled.exit_code == 0, sampled.output
    assert "4 examples, 2 seeds" in sampled.output
    mean, std = numbers(sampled.output, "Rouge-L")
    assert 0.0 <= mean <= 100.0 and std >= 0.0


def test_eval_refuses_bad_seeds_and_missing_data(toy_world, tmp_path):
    bad = runner.invoke(app, ["eval", str(toy_world.student), str(toy_world.dev), "--seeds", "x"])
    assert bad.exit_code == 2 and "error" in bad.output
    missing = runner.invoke(app, ["eval", str(toy_world.student), str(tmp_path / "none.jsonl")])
    assert missing.exit_code == 2 and "error" in missing.output
