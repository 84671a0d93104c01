"""The training loop through run_job's public behaviour: the learning rate each step really used, gradient
clipping (the norm before and the norm applied), and exact resume of a student whose dropout is active."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from dskd_core.checkpoint import latest_checkpoint
from dskd_core.train import run_job
from tests.core.test_checkpoint import CancelAfter
from tests.core.test_train import ListSink, make_spec

LR, MAX_NORM = 3e-3, 0.05
# linear schedule, 6 steps, warmup_ratio 0.5: 3 warmup steps (1/3, 2/3, 1), then linear decay (1, 2/3, 1/3)
EXPECTED_FACTORS = [1 / 3, 2 / 3, 1, 1, 2 / 3, 1 / 3]


@pytest.fixture(scope="module")
def step_events(toy_world, tmp_path_factory) -> list:
    sink = ListSink()
    spec = make_spec(
        toy_world,
        max_steps=6,
        log_interval=1,
        lr=LR,
        schedule="linear",
        warmup_ratio=0.5,
        max_grad_norm=MAX_NORM,  # far below the toy student's gradient norm: every step clips
    )
    run_job(spec, tmp_path_factory.mktemp("loop"), sink=sink)
    steps = [e for e in sink.events if e.type == "step"]
    assert [e.step for e in steps] == [1, 2, 3, 4, 5, 6]
    return steps


def test_each_step_uses_the_scheduled_learning_rate(step_events) -> None:
    lrs = [e.metrics["lr"] for e in step_events]
    assert lrs == pytest.approx([LR * f for f in EXPECTED_FACTORS], rel=1e-6)


def test_gradients_are_clipped_to_max_grad_norm(step_events) -> None:
    for e in step_events:
        before, applied = e.metrics["grad_norm"], e.metrics["grad_norm_clipped"]
        assert before > 2 * MAX_NORM, before  # clipping had work to do
        assert applied <= MAX_NORM * (1 + 1e-4), (before, applied)
        assert applied == pytest.approx(MAX_NORM, rel=1e-3)  # scaled down to the bound, not zeroed


def test_a_norm_under_the_bound_is_left_alone(toy_world, tmp_path) -> None:
    sink = ListSink()
    run_job(make_spec(toy_world, max_steps=1, max_grad_norm=1e6), tmp_path, sink=sink)
    (step,) = [e for e in sink.events if e.type == "step"]
    assert step.metrics["grad_norm_clipped"] == pytest.approx(step.metrics["grad_norm"], rel=1e-5)


def student_with_dropout(world, tmp_path, p: float = 0.3):
    path = tmp_path / "student-dropout"
    shutil.copytree(world.student, path)
    config = json.loads((path / "config.json").read_text())
    assert "attention_dropout" in config, sorted(config)
    config["attention_dropout"] = p
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_resume_reproduces_the_run_with_active_dropout(toy_world, tmp_path) -> None:
    """Dropout draws from the RNG: stopping after step 2 and resuming reproduces 4 straight steps only if the
    checkpoint restores the RNG state too."""
    from transformers import AutoModelForCausalLM

    student = student_with_dropout(toy_world, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(student).train()
    ids = torch.arange(3, 19).unsqueeze(0)
    with torch.no_grad():
        assert not torch.equal(model(ids).logits, model(ids).logits), "dropout is not active"
    spec = make_spec(toy_world, student=student, max_steps=4, grad_accum=2, batch_size=3)
    straight = run_job(spec, tmp_path / "straight")
    interrupted = run_job(spec, tmp_path / "resumed", cancel=CancelAfter(2))
    assert interrupted.status == "cancelled" and interrupted.steps == 2
    assert latest_checkpoint(tmp_path / "resumed").name == "step-000002"
    resumed = run_job(spec, tmp_path / "resumed")
    assert resumed.status == "completed" and resumed.steps == 4
    assert resumed.metrics["loss"] == pytest.approx(straight.metrics["loss"], rel=1e-5)
    a = load_file(straight.export_dir / "model.safetensors")
    b = load_file(resumed.export_dir / "model.safetensors")
    assert a.keys() == b.keys() and len(a) > 3
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
