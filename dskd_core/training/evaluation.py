"""Evaluation and checkpoint selection: dev metrics, checkpoints, the final evaluation and the export.

Dev metrics come in two kinds: the dev loss and response CE (`evaluate`, every `training.eval_interval` steps and
at the end), and the generation-based scores of `selection.py` (every `evaluation.interval`), which pick the best
checkpoint when `evaluation.select_best` is on. Only the main process writes checkpoints, the export and events.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dskd_core import models
from dskd_core.checkpoint import TrainState, load_student, save_checkpoint, step_dir
from dskd_core.distillers import Distiller
from dskd_core.progress import ProgressEvent, ProgressSink, RunResult
from dskd_core.selection import dev_generation, generation_due, record_scores
from dskd_core.training.step import IGNORE_INDEX, count_tokens

if TYPE_CHECKING:
    from dskd_core.training.setup import Run, Setup


def after_step(run: Run, sink: ProgressSink, epoch_ended: bool) -> None:
    """The periodic work after an optimizer step (never after the last one: `finish` does that)."""
    state, t, ev = run.state, run.spec.training, run.spec.evaluation
    if state.step >= run.total_steps:
        return
    if (t.eval_interval and state.step % t.eval_interval == 0) or eval_time_due(run):
        state.metrics = evaluate(run.setup, run.accelerator)
        run.last_evaluated = time.monotonic()
        if state.metrics:
            state.best_metric = best(state.best_metric, state.metrics["dev_ce"])
            sink.emit(event("eval", run, state.metrics))
    new_best = False
    if generation_due(ev.interval, state.step, epoch_ended):
        new_best = generation_eval(run, sink)
    by_steps = bool(t.checkpoint_interval) and state.step % t.checkpoint_interval == 0
    by_time = (
        t.checkpoint_minutes is not None and time.monotonic() - run.last_saved >= 60 * t.checkpoint_minutes
    )
    if by_steps or by_time or new_best:
        save(run, sink, state.metrics)


def eval_time_due(run: Run) -> bool:
    """`training.eval_minutes` passed since the last dev evaluation. Every process takes the same decision (the
    evaluation reduces across processes), so with several the clocks are combined: due when due on any."""
    minutes = run.spec.training.eval_minutes
    if minutes is None or run.setup.dev_set is None:
        return False
    due = time.monotonic() - run.last_evaluated >= 60 * minutes
    if run.accelerator.num_processes > 1:
        flag = torch.tensor([float(due)], device=run.accelerator.device)
        due = bool(run.accelerator.reduce(flag, reduction="sum").item() > 0)
    return due


def save(run: Run, sink: ProgressSink, metrics: dict[str, float]) -> Path | None:
    """A checkpoint of the current state (main process only); the best step survives rotation."""
    if not run.accelerator.is_main_process:
        return None
    ev = run.spec.evaluation
    path = save_checkpoint(
        run.run_dir,
        run.state,
        student=run.setup.student,
        distiller=run.setup.distiller,
        optimizer=run.optimizer,
        scheduler=run.scheduler,
        keep=run.spec.training.keep_checkpoints,
        protect=run.state.best_step if ev.select_best else None,
    )
    run.last_saved = time.monotonic()
    sink.emit(event("checkpoint", run, metrics, message=str(path)))
    return path


def generation_eval(run: Run, sink: ProgressSink) -> bool:
    """Generation-based dev scores; True when this step becomes the best one."""
    setup = run.setup
    if not setup.dev_records:
        return False
    scores = dev_generation(setup.student, setup.student_tokenizer, setup.dev_records, run.spec)
    sink.emit(event("eval", run, scores))
    return record_scores(run.state, scores, run.spec)


def finish(run: Run, sink: ProgressSink, last_metrics: dict[str, float]) -> RunResult:
    """Final evaluation, the last checkpoint, and the export (the best checkpoint's weights when selected)."""
    state, ev, setup, accelerator = run.state, run.spec.evaluation, run.setup, run.accelerator
    final = evaluate(setup, accelerator) if setup.dev_set is not None else {}
    if final:
        state.metrics = final
        state.best_metric = best(state.best_metric, final["dev_ce"])
        sink.emit(event("eval", run, final))
    if ev.interval is not None and setup.dev_records:
        generation_eval(run, sink)
        final = dict(state.metrics)
    exported = {**last_metrics, **final}
    export_dir = None
    if accelerator.is_main_process:
        from dskd_core.export import export_student

        if run.spec.training.checkpoint_interval:
            save(run, sink, final)
        student = accelerator.unwrap_model(run.module).student
        if ev.select_best and state.best_step is not None and state.best_step != state.step:
            # Training is over: the student may take the best checkpoint's weights for the export.
            load_student(step_dir(run.run_dir, state.best_step), student)
            exported = {**last_metrics, **state.best_metrics}
        if ev.interval is not None:
            exported["exported_step"] = float(state.best_step if ev.select_best else state.step)
        export_dir = export_student(
            run.run_dir / "export",
            student=student,
            tokenizer=setup.student_tokenizer,
            spec=run.spec,
            projectors=export_state(setup.distiller),
            metrics=exported,
        )
        sink.emit(event("exported", run, exported, message=str(export_dir)))
    accelerator.wait_for_everyone()
    return RunResult("completed", state.step, run.total_steps, export_dir, exported)


@torch.no_grad()
def dev_ce(
    model: nn.Module,
    tokenizer: Any,
    batches: list[dict[str, torch.Tensor]],
    accelerator,
    *,
    hidden_key: str | None = None,
) -> float:
    """Mean response-token cross-entropy of `model` over `batches` (this rank's share, summed over ranks).

    With `hidden_key`, batches that carry the model's last hidden states under that key (the teacher cache) are
    not run through the model."""
    head = models.output_head(model).weight[: len(tokenizer)]
    sums = torch.zeros(2, device=accelerator.device)
    for b in batches:
        if hidden_key is not None and hidden_key in b:
            hidden = b[hidden_key]
        else:
            hidden = models.last_hidden_state(model, b["input_ids"], b["attention_mask"])
        valid = b["labels"] != IGNORE_INDEX
        logits = hidden[valid].float() @ head.float().T
        sums[0] += torch.nn.functional.cross_entropy(logits, b["labels"][valid], reduction="sum")
        sums[1] += valid.sum()
    sums = accelerator.reduce(sums, reduction="sum")
    return float(sums[0] / sums[1].clamp_min(1))


@torch.no_grad()
def evaluate(setup: Setup, accelerator, *, with_teacher: bool = False) -> dict[str, float]:
    """Dev metrics: the student's response CE, the distiller's loss, and (at step 0) the teacher's CE."""
    if setup.dev_set is None or len(setup.dev_set) == 0:
        return {}
    distiller, student = setup.distiller, setup.student
    bs, rank, world = (
        setup.distiller.spec.training.batch_size,
        accelerator.process_index,
        accelerator.num_processes,
    )
    indices = list(range(len(setup.dev_set)))[rank::world]
    batches = [
        {k: v.to(accelerator.device) for k, v in setup.collate_split("dev", indices[i : i + bs]).items()}
        for i in range(0, len(indices), bs)
    ]
    was_training = student.training
    student.eval()
    distiller.eval()
    try:
        with accelerator.autocast():
            metrics = {"dev_ce": dev_ce(student, setup.student_tokenizer, batches, accelerator)}
            tokens = count_tokens(batches, accelerator)
            loss = sum(float(distiller(b, tokens).loss) for b in batches)
            metrics["dev_loss"] = float(accelerator.reduce(torch.tensor(loss, device=accelerator.device)))
            # Decided from the data set, not this process's batches: a process may hold no dev example, and
            # every process must make the same reductions.
            same_labels = setup.teacher is not None and not getattr(setup.dev_set, "dual", False)
            if with_teacher and same_labels:
                metrics["teacher_dev_ce"] = dev_ce(
                    setup.teacher, setup.student_tokenizer, batches, accelerator, hidden_key="teacher_hidden"
                )
    finally:
        student.train(was_training)
        distiller.train(was_training)
    return metrics


def best(previous: float | None, value: float) -> float:
    return value if previous is None else min(previous, value)


def export_state(distiller: Distiller) -> dict[str, torch.Tensor]:
    """The projectors to ship with the student (the distiller's `export_state()` when it defines one)."""
    fn = getattr(distiller, "export_state", None)
    return dict(fn()) if callable(fn) else dict(distiller.state_dict())


def event(
    kind: str, run: Run, metrics: dict[str, float] | None = None, message: str | None = None
) -> ProgressEvent:
    """A progress event at the run's current step and fractional epoch."""
    state: TrainState = run.state
    epoch = state.epoch + state.batches_in_epoch / max(run.micro_per_epoch, 1)
    return ProgressEvent(kind, state.step, state.total_steps, epoch, dict(metrics or {}), message)
