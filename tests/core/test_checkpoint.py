"""Checkpoints: atomic layout, rotation, partial directories ignored, exact state restore, and exact resume."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dskd_core.checkpoint import (
    TrainState,
    latest_checkpoint,
    list_complete,
    load_checkpoint,
    save_checkpoint,
)
from dskd_core.spec import JobSpec
from dskd_core.train import run_job


class TinyDistiller(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.projector = nn.Linear(3, 2, bias=False)


def parts(seed: int):
    torch.manual_seed(seed)
    student, distiller = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 4)), TinyDistiller()
    optimizer = torch.optim.AdamW([*student.parameters(), *distiller.parameters()], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (s + 1))
    return student, distiller, optimizer, scheduler


def take_step(student, distiller, optimizer, scheduler) -> None:
    loss = distiller.projector(student(torch.randn(5, 4))[:, :3]).pow(2).sum()
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def test_keeps_the_newest_complete_checkpoints_and_ignores_partial_ones(tmp_path):
    student, distiller, optimizer, scheduler = parts(0)
    for step in range(1, 5):
        take_step(student, distiller, optimizer, scheduler)
        save_checkpoint(
            tmp_path,
            TrainState(step=step),
            student=student,
            distiller=distiller,
            optimizer=optimizer,
            scheduler=scheduler,
            keep=2,
        )
    assert [p.name for p in list_complete(tmp_path)] == ["step-000003", "step-000004"]
    # A crash mid-write leaves a temp dir, or a renamed dir without its marker: neither is a checkpoint.
    (tmp_path / "checkpoints" / ".tmp-step-000009-123").mkdir()
    (tmp_path / "checkpoints" / "step-000010").mkdir()
    (tmp_path / "checkpoints" / "step-000010" / "state.json").write_text("{")
    assert latest_checkpoint(tmp_path).name == "step-000004"
    assert sorted(f.name for f in latest_checkpoint(tmp_path).iterdir()) == [
        "complete",
        "distiller.safetensors",
        "optimizer.pt",
        "rng.pt",
        "state.json",
        "student.safetensors",
    ]


def test_load_restores_weights_optimizer_scheduler_and_rng(tmp_path):
    student, distiller, optimizer, scheduler = parts(0)
    take_step(student, distiller, optimizer, scheduler)
    state = TrainState(step=1, epoch=2, batches_in_epoch=3, best_metric=1.5, metrics={"dev_ce": 1.5})
    path = save_checkpoint(
        tmp_path,
        state,
        student=student,
        distiller=distiller,
        optimizer=optimizer,
        scheduler=scheduler,
        keep=1,
    )
    # What the original run does next: one more step and a draw from each RNG.
    take_step(student, distiller, optimizer, scheduler)
    expected = (torch.rand(3), np.random.rand(3), random.random(), [p.clone() for p in student.parameters()])

    student2, distiller2, optimizer2, scheduler2 = parts(1)  # other initial weights and RNG
    restored = load_checkpoint(
        path, student=student2, distiller=distiller2, optimizer=optimizer2, scheduler=scheduler2
    )
    assert restored == state
    assert scheduler2.last_epoch == 1
    take_step(student2, distiller2, optimizer2, scheduler2)
    torch.testing.assert_close(torch.rand(3), expected[0])
    np.testing.assert_array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
    for a, b in zip(student2.parameters(), expected[3], strict=True):
        torch.testing.assert_close(a, b)


def test_load_refuses_a_checkpoint_of_another_model(tmp_path):
    student, distiller, optimizer, scheduler = parts(0)
    path = save_checkpoint(
        tmp_path,
        TrainState(),
        student=student,
        distiller=distiller,
        optimizer=optimizer,
        scheduler=scheduler,
        keep=1,
    )
    other = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match="do not match"):
        load_checkpoint(path, student=other, distiller=distiller, optimizer=optimizer, scheduler=scheduler)


class CancelAfter:
    def __init__(self, steps: int) -> None:
        self.calls, self.steps = 0, steps

    def cancelled(self) -> bool:
        self.calls += 1
        return self.calls > self.steps


def test_resume_after_a_cancel_reproduces_the_uninterrupted_run(toy_world, tmp_path):
    """DSKD (projectors in the state), grad_accum=2, dropout on: stop at step 3, resume to 6 = 6 straight steps."""
    spec = JobSpec.model_validate(
        {
            "student": {"name_or_path": str(toy_world.student)},
            "teacher": {"name_or_path": str(toy_world.teacher)},
            "data": {"path": str(toy_world.train)},
            "distill": {"method": "dskd", "projector_init": "random"},
            "training": {
                "max_steps": 6,
                "batch_size": 3,
                "grad_accum": 2,
                "max_length": 64,
                "max_prompt_length": 32,
            },
        }
    )
    straight = run_job(spec, tmp_path / "straight")
    interrupted = run_job(spec, tmp_path / "resumed", cancel=CancelAfter(3))
    assert interrupted.status == "cancelled" and interrupted.steps == 3 and interrupted.export_dir is None
    assert latest_checkpoint(tmp_path / "resumed").name == "step-000003"
    resumed = run_job(spec, tmp_path / "resumed")
    assert resumed.status == "completed" and resumed.steps == 6
    assert resumed.metrics["loss"] == pytest.approx(straight.metrics["loss"], rel=1e-5)
    for name in ("model.safetensors", "projectors.safetensors"):
        a, b = load_file(straight.export_dir / name), load_file(resumed.export_dir / name)
        assert a.keys() == b.keys() and a
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
