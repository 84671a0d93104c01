"""The training loop on the fast toy world: loss goes down, progress events, normalisation, pre-flight refusals."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from dskd_core.errors import NonFiniteLossError
from dskd_core.progress import ProgressEvent
from dskd_core.spec import JobSpec
from dskd_core.train import (
    PreflightError,
    TrainingModule,
    lr_lambda,
    make_accelerator,
    prepare,
    run_job,
    train_step,
)


class ListSink:
    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []

    def emit(self, event: ProgressEvent) -> None:
        self.events.append(event)


def make_spec(world, method: str = "sft", student: Path | None = None, **training) -> JobSpec:
    settings = {"max_steps": 6, "batch_size": 4, "max_length": 64, "max_prompt_length": 32, "lr": 3e-3}
    return JobSpec.model_validate(
        {
            "student": {"name_or_path": str(student or world.student)},
            "teacher": {"name_or_path": str(world.teacher)},
            "data": {"path": str(world.train), "dev_path": str(world.dev), "dev_max_examples": 16},
            "distill": {"method": method},
            "training": settings | training,
        }
    )


@pytest.mark.parametrize("method", ["sft", "vanilla_kd", "dskd"])
def test_a_few_steps_reduce_the_dev_loss(toy_world, tmp_path, method):
    sink = ListSink()
    result = run_job(make_spec(toy_world, method, max_steps=8, eval_interval=8), tmp_path, sink=sink)
    evals = [e for e in sink.events if e.type == "eval"]
    before, after = evals[0].metrics["dev_ce"], evals[-1].metrics["dev_ce"]
    assert result.status == "completed" and result.steps == 8
    assert math.isfinite(result.metrics["loss"])
    assert after < before - 0.05, (before, after)
    if method != "sft":  # the teacher's CE is reported once, for reference
        assert "teacher_dev_ce" in evals[0].metrics


def test_progress_events_come_in_order(toy_world, tmp_path):
    sink = ListSink()
    spec = make_spec(toy_world, max_steps=4, eval_interval=2, checkpoint_interval=2, log_interval=1)
    result = run_job(spec, tmp_path, sink=sink)
    kinds = [(e.type, e.step) for e in sink.events]
    assert kinds == [
        ("started", 0),
        ("eval", 0),
        ("step", 1),
        ("step", 2),
        ("eval", 2),
        ("checkpoint", 2),
        ("step", 3),
        ("step", 4),
        ("eval", 4),
        ("checkpoint", 4),
        ("exported", 4),
    ]
    assert all(e.total_steps == 4 for e in sink.events)
    step = next(e for e in sink.events if e.type == "step")
    assert {"loss", "lr", "tokens_per_s", "elapsed_s"} <= set(step.metrics)
    assert sink.events[-1].message == str(result.export_dir) == str(tmp_path / "export")


def test_micro_batches_sum_to_the_full_batch_gradient(toy_world):
    """grad_accum=2 of 4 examples gives the gradient of one batch of 8: losses are divided by the step's count."""
    spec = make_spec(toy_world, batch_size=8)
    accelerator = make_accelerator("fp32", "cpu")
    setup = prepare(spec, accelerator.device)
    module = TrainingModule(
        setup.student, setup.distiller
    ).eval()  # no dropout: both runs see the same function
    examples = [setup.train_set[i] for i in range(8)]

    def grads(micro_batches):
        module.zero_grad(set_to_none=True)
        metrics, tokens = train_step(module, [setup.collate(b) for b in micro_batches], accelerator)
        return metrics["loss"], tokens, [p.grad.clone() for p in module.parameters() if p.grad is not None]

    loss_full, tokens_full, full = grads([examples])
    loss_split, tokens_split, split = grads([examples[:3], examples[3:]])  # unequal token counts on purpose
    assert tokens_full == tokens_split
    assert loss_split == pytest.approx(loss_full, rel=1e-5)
    for a, b in zip(full, split, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_non_finite_loss_stops_the_run_before_the_update(toy_world, tmp_path, monkeypatch):
    import dskd_core.training.step as step

    def diverged(module, micro_batches, accelerator):
        return {"loss": math.nan}, 1.0

    monkeypatch.setattr(step, "train_step", diverged)
    with pytest.raises(NonFiniteLossError, match="at step 1"):
        run_job(make_spec(toy_world, max_steps=2), tmp_path)


def test_same_vocabulary_methods_refuse_a_cross_vocabulary_pair(toy_world, tmp_path):
    spec = make_spec(toy_world, "vanilla_kd", student=toy_world.cross_student)
    with pytest.raises(PreflightError, match="share one tokenizer"):
        run_job(spec, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [("constant", [1, 1, 1]), ("linear", [1, 2 / 3, 1 / 3]), ("cosine", [1, 0.75, 0.25])],
)
def test_lr_schedule_warms_up_then_decays(schedule, expected):
    factor = lr_lambda(schedule, warmup_ratio=0.5, total_steps=6)  # 3 warmup steps, then 3 decay steps
    warmup = [1 / 3, 2 / 3, 1]  # the first step already trains (HF's schedules start at lr 0)
    assert [factor(s) for s in range(6)] == pytest.approx(warmup + expected)
