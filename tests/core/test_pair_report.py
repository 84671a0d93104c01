"""`dskd pair-report TEACHER STUDENT`: the overlap report and the methods valid for the pair (text and --json)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dskd_cli.main import app

runner = CliRunner()


def test_cross_vocabulary_pair(toy_world):
    result = runner.invoke(app, ["pair-report", str(toy_world.teacher), str(toy_world.cross_student)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "identical tokenisation: no" in lines
    assert any(line.startswith("teacher tokens with a student counterpart:") for line in lines)
    valid = next(line for line in lines if line.startswith("valid methods:"))
    methods = valid.removeprefix("valid methods: ").split(", ")
    assert {"dskd_cma", "dskd_eta", "shared_vocab_kd", "uld", "mined", "sft"} <= set(methods)
    assert "vanilla_kd" not in methods and "dskd" not in methods


def test_cross_vocabulary_pair_as_json(toy_world):
    result = runner.invoke(
        app, ["pair-report", str(toy_world.teacher), str(toy_world.cross_student), "--json"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    overlap = payload["overlap"]
    assert overlap["identical"] is False and payload["same_vocabulary"] is False
    assert 0 < overlap["shared_count"] <= min(overlap["teacher_vocab_size"], overlap["student_vocab_size"])
    assert overlap["teacher_fraction"] == overlap["teacher_shared"] / overlap["teacher_vocab_size"]
    assert "vanilla_kd" not in payload["valid_methods"] and "dskd_eta" in payload["valid_methods"]


def test_identical_tokenizers_allow_every_method(toy_world):
    result = runner.invoke(app, ["pair-report", str(toy_world.teacher), str(toy_world.teacher), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["overlap"]["identical"] is True
    assert payload["overlap"]["teacher_fraction"] == 1.0 and payload["overlap"]["student_fraction"] == 1.0
    assert {"vanilla_kd", "dskd", "dskd_cma"} <= set(payload["valid_methods"])


def test_same_vocabulary_student_allows_same_vocabulary_methods(toy_world):
    """The toy student shares the teacher's ids (it may load with another pre-tokenizer class)."""
    result = runner.invoke(app, ["pair-report", str(toy_world.teacher), str(toy_world.student)])
    assert result.exit_code == 0, result.output
    valid = next(line for line in result.output.splitlines() if line.startswith("valid methods:"))
    assert {"vanilla_kd", "dskd"} <= set(valid.removeprefix("valid methods: ").split(", "))


def test_missing_model_exits_2(tmp_path):
    result = runner.invoke(app, ["pair-report", str(tmp_path / "nope"), str(tmp_path / "nope2")])
    assert result.exit_code == 2
    assert "cannot load the tokenizer" in result.output and "Traceback" not in result.output
