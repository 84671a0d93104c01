"""Best-checkpoint selection by a generation-based dev score: kept through rotation, exported, reported."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import dskd_core.training.evaluation as training_evaluation
from dskd_core.checkpoint import list_complete
from dskd_core.selection import generation_due
from dskd_core.spec import JobSpec
from dskd_core.train import run_job


class ListSink:
    def __init__(self) -> None:
        self.events = []

    def emit(self, event) -> None:
        self.events.append(event)


def make_spec(world, *, evaluation: dict, **training) -> JobSpec:
    settings = {"max_steps": 6, "batch_size": 2, "max_length": 48, "max_prompt_length": 32, "lr": 3e-3}
    return JobSpec.model_validate(
        {
            "student": {"name_or_path": str(world.student)},
            "data": {"path": str(world.train), "dev_path": str(world.dev), "dev_max_examples": 4},
            "distill": {"method": "sft"},
            "training": settings | training,
            "evaluation": evaluation,
        }
    )


def scripted_scores(monkeypatch, rouge: list[float]) -> list[int]:
    """Make the dev generation return `rouge[i]` on its i-th call; returns the list of calls' steps."""
    calls: list[int] = []

    def fake(student, tokenizer, records, spec):
        calls.append(len(calls))
        value = rouge[len(calls) - 1]
        return {
            "dev_rougeL": value,
            "dev_rougeL_std": 0.0,
            "dev_exact_match": value / 10,
            "dev_exact_match_std": 0.0,
        }

    monkeypatch.setattr(training_evaluation, "dev_generation", fake)
    return calls


def common_weights(export_dir, checkpoint) -> list[str]:
    exported = load_file(export_dir / "model.safetensors")
    saved = load_file(checkpoint / "student.safetensors")
    keys = [k for k in saved if k in exported]
    # The callers compare these tensor by tensor: an empty list would make their loops pass vacuously.
    assert len(keys) >= len(saved) - 1, (sorted(saved), sorted(exported))  # all but a tied lm_head
    assert any("layers" in k for k in keys)
    return keys


def test_the_best_dev_score_is_kept_through_rotation_and_exported(toy_world, tmp_path, monkeypatch):
    calls = scripted_scores(monkeypatch, [10.0, 30.0, 20.0])  # steps 1, 2 and the final 3: step 2 is best
    sink = ListSink()
    spec = make_spec(
        toy_world, evaluation={"interval": 1}, checkpoint_interval=1, keep_checkpoints=1, max_steps=3
    )
    result = run_job(spec, tmp_path, sink=sink)

    assert len(calls) == 3
    assert [c.name for c in list_complete(tmp_path)] == ["step-000002", "step-000003"]
    generation_evals = [
        (e.step, e.metrics["dev_rougeL"])
        for e in sink.events
        if e.type == "eval" and "dev_rougeL" in e.metrics
    ]
    assert generation_evals == [(1, 10.0), (2, 30.0), (3, 20.0)]
    manifest = json.loads((result.export_dir / "manifest.json").read_text())
    assert manifest["metrics"]["dev_rougeL"] == 30.0 and manifest["metrics"]["exported_step"] == 2
    assert result.metrics["dev_rougeL"] == 30.0

    best = tmp_path / "checkpoints" / "step-000002"
    keys = common_weights(result.export_dir, best)
    assert keys
    exported, saved = (
        load_file(result.export_dir / "model.safetensors"),
        load_file(best / "student.safetensors"),
    )
    last = load_file(tmp_path / "checkpoints" / "step-000003" / "student.safetensors")
    for k in keys:
        torch.testing.assert_close(exported[k], saved[k])
    assert any(not torch.equal(exported[k], last[k]) for k in keys)  # not the last weights


def test_select_best_off_exports_the_last_weights(toy_world, tmp_path, monkeypatch):
    scripted_scores(monkeypatch, [50.0, 10.0])  # steps 1 and 2
    spec = make_spec(
        toy_world, evaluation={"interval": 1, "select_best": False}, checkpoint_interval=2, max_steps=2
    )
    result = run_job(spec, tmp_path)
    last = tmp_path / "checkpoints" / "step-000002"
    exported, saved = (
        load_file(result.export_dir / "model.safetensors"),
        load_file(last / "student.safetensors"),
    )
    for k in common_weights(result.export_dir, last):
        torch.testing.assert_close(exported[k], saved[k])
    assert json.loads((result.export_dir / "manifest.json").read_text())["metrics"]["exported_step"] == 2


def test_dev_generation_reports_rouge_l_in_events_and_manifest(toy_world, tmp_path):
    """The real evaluation (greedy, a few dev examples, short responses): Rouge-L lands in events and manifest."""
    sink = ListSink()
    evaluation = {"interval": 1, "do_sample": False, "max_new_tokens": 8, "max_examples": 3}
    result = run_job(make_spec(toy_world, evaluation=evaluation, max_steps=2), tmp_path, sink=sink)
    scored = [e for e in sink.events if e.type == "eval" and "dev_rougeL" in e.metrics]
    assert [e.step for e in scored] == [1, 2]
    for e in scored:
        assert 0.0 <= e.metrics["dev_rougeL"] <= 100.0 and e.metrics["dev_rougeL_std"] == 0.0
    manifest = json.loads((result.export_dir / "manifest.json").read_text())
    assert manifest["metrics"]["dev_rougeL"] == pytest.approx(max(e.metrics["dev_rougeL"] for e in scored))


@pytest.mark.parametrize(
    ("interval", "step", "epoch_ended", "due"),
    [
        (None, 4, True, False),
        (2, 4, False, True),
        (2, 3, True, False),
        ("epoch", 3, True, True),
        ("epoch", 4, False, False),
    ],
)
def test_generation_due(interval, step, epoch_ended, due):
    assert generation_due(interval, step, epoch_ended) is due
