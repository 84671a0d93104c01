"""The training loop: one job spec in, a distilled and exported student out.

Read `run_job` top to bottom: set-up (pre-flight checks, models, data, distiller, optimizer), resume, the loop
(step, log, evaluate, checkpoint, cancel), final evaluation and export. The pieces it calls are small helpers
below it. Everything runs through `accelerate`, so the same code uses a CPU, one GPU or several.

Loss normalisation (methods.md §2, design.md "Losses"): every loss term is a sum over valid tokens divided by the
valid-token count of the WHOLE optimisation step (all micro-batches of the gradient accumulation, all ranks).
So the step first fetches its micro-batches, counts their labels, and each micro-batch's backward adds its share:
the gradients are summed, not averaged, and the result does not depend on how the step was split.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dskd_core import models
from dskd_core.checkpoint import (
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    load_student,
    save_checkpoint,
    step_dir,
)
from dskd_core.distillers import DistillContext, Distiller, TokenCounts, get_distiller_class
from dskd_core.errors import NonFiniteLossError, PreflightError
from dskd_core.progress import CancelToken, NeverCancel, NullSink, ProgressEvent, ProgressSink, RunResult
from dskd_core.selection import dev_generation, generation_due, record_scores
from dskd_core.spec import JobSpec

IGNORE_INDEX = -100


class TrainingModule(nn.Module):
    """The student and the distiller's own parameters under one module, so that DDP/FSDP wrap both.

    The distiller keeps a plain reference to the same student, so calling it through this module's forward
    runs the wrapped model's hooks (gradient synchronisation) on every trainable parameter.
    """

    def __init__(self, student: nn.Module, distiller: Distiller) -> None:
        super().__init__()
        self.student = student
        self.distiller = distiller

    def forward(self, batch: dict[str, Any], tokens: TokenCounts):
        if tokens.kd_student is None:
            return self.distiller(batch, tokens)
        from dskd_core.onpolicy import KD_KEY, split_loss

        # An on-policy step: CE on the reference batch, KD terms on the sample (or on the reference itself).
        reference = {k: v for k, v in batch.items() if k != KD_KEY}
        return split_loss(self.distiller, reference, batch.get(KD_KEY, reference), tokens)


@dataclass
class Setup:
    """Everything built before the first step."""

    student: nn.Module
    teacher: nn.Module | None
    student_tokenizer: Any
    teacher_tokenizer: Any | None
    distiller: Distiller
    train_set: Any
    dev_set: Any | None
    collate: Any
    train_records: list | None = None
    dev_records: list | None = None  # for generation-based dev evaluation (EvalSpec.interval)


def run_job(
    spec: JobSpec,
    run_dir: str | Path,
    *,
    sink: ProgressSink | None = None,
    cancel: CancelToken | None = None,
    device: str | None = None,
) -> RunResult:
    """Train `spec` in `run_dir` (resuming from its newest complete checkpoint) and export the student."""
    from accelerate.utils import set_seed

    cancel = cancel or NeverCancel()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t, ev = spec.training, spec.evaluation
    accelerator = make_accelerator(t.precision, device)
    # One process reports: the others would repeat the same events.
    sink = (sink or NullSink()) if accelerator.is_main_process else NullSink()
    set_seed(t.seed)

    # ---- set-up: everything that can fail does so before the first step
    if spec.distill.method == "seqkd":
        from dskd_core.seqkd import GenerationCancelled, ensure_teacher_responses

        try:  # the teacher writes the training responses first (resumable; one process writes the file)
            if accelerator.is_main_process:
                ensure_teacher_responses(spec, run_dir, accelerator.device, sink=sink, cancel=cancel)
        except GenerationCancelled:
            return RunResult("cancelled", 0, 0, None, {})
        accelerator.wait_for_everyone()
    setup = prepare(spec, accelerator.device, run_dir=run_dir)
    distiller = setup.distiller
    optimizer = torch.optim.AdamW(distiller.param_groups(), lr=t.lr, weight_decay=t.weight_decay)
    micro_per_epoch = math.ceil(len(setup.train_set) / (t.batch_size * accelerator.num_processes))
    total_steps = t.max_steps or max(1, math.ceil(t.epochs * micro_per_epoch / t.grad_accum))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(t.schedule, t.warmup_ratio, total_steps)
    )
    module, optimizer = accelerator.prepare(TrainingModule(setup.student, distiller), optimizer)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    sampler = None
    if spec.distill.on_policy_ratio > 0:
        from dskd_core.onpolicy import OnPolicySampler

        sampler = OnPolicySampler(
            spec, setup.student, setup.student_tokenizer, setup.teacher_tokenizer, setup.collate
        )

    # ---- resume from the newest complete checkpoint, if any
    state = TrainState(total_steps=total_steps, spec_json=spec.to_json())
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None:
        check_same_job(checkpoint, spec)
        state = load_checkpoint(
            checkpoint, student=setup.student, distiller=distiller, optimizer=optimizer, scheduler=scheduler
        )
        state.total_steps = total_steps

    def save(metrics: dict[str, float]) -> Path | None:
        if not accelerator.is_main_process:
            return None
        path = save_checkpoint(
            run_dir,
            state,
            student=setup.student,
            distiller=distiller,
            optimizer=optimizer,
            scheduler=scheduler,
            keep=t.keep_checkpoints,
            protect=state.best_step if ev.select_best else None,
        )
        sink.emit(event("checkpoint", state, micro_per_epoch, metrics, message=str(path)))
        return path

    def generation_eval() -> bool:
        if not setup.dev_records:
            return False
        scores = dev_generation(setup.student, setup.student_tokenizer, setup.dev_records, spec)
        sink.emit(event("eval", state, micro_per_epoch, scores))
        return record_scores(state, scores, spec)

    sink.emit(
        event("started", state, micro_per_epoch, message=f"resumed from {checkpoint}" if checkpoint else None)
    )
    if state.step == 0 and setup.dev_set is not None:  # the "before" figure
        metrics = evaluate(setup, accelerator, with_teacher=True)
        sink.emit(event("eval", state, micro_per_epoch, metrics))

    # ---- the loop
    batches = batch_stream(setup, t.batch_size, t.seed, state.epoch, state.batches_in_epoch, accelerator)
    started, tokens_seen, last_metrics = time.perf_counter(), 0.0, {}
    while state.step < total_steps:
        if cancel.cancelled():
            save(last_metrics)
            return RunResult("cancelled", state.step, total_steps, None, last_metrics)

        micro_batches = [next(batches) for _ in range(t.grad_accum)]
        epoch_before = state.epoch
        sampled = 0
        if sampler is not None:
            sampled = sampler.attach(micro_batches, state.step, accelerator.process_index)
        state.epoch, state.batches_in_epoch = micro_batches[-1][0]
        step_metrics, n_tokens = train_step(module, [b for _, b in micro_batches], accelerator)
        if not math.isfinite(step_metrics["loss"]):
            raise NonFiniteLossError(
                f"the training loss became {step_metrics['loss']} at step {state.step + 1}: lower training.lr, "
                "keep training.max_grad_norm set, or use precision fp32"
            )
        if t.max_grad_norm is not None:
            step_metrics["grad_norm"] = float(accelerator.clip_grad_norm_(trainable, t.max_grad_norm))
        step_metrics["lr"] = scheduler.get_last_lr()[0]
        if sampler is not None:
            step_metrics["on_policy"] = sampled / len(micro_batches)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        tokens_seen += n_tokens
        last_metrics = step_metrics

        if state.step % t.log_interval == 0 or state.step == total_steps:
            elapsed = time.perf_counter() - started
            step_metrics |= {"tokens_per_s": tokens_seen / max(elapsed, 1e-9), "elapsed_s": elapsed}
            sink.emit(event("step", state, micro_per_epoch, step_metrics))
        if t.eval_interval and state.step % t.eval_interval == 0 and state.step < total_steps:
            state.metrics = evaluate(setup, accelerator)
            state.best_metric = best(state.best_metric, state.metrics["dev_ce"])
            sink.emit(event("eval", state, micro_per_epoch, state.metrics))
        new_best = False
        if generation_due(ev.interval, state.step, epoch_before < state.epoch) and state.step < total_steps:
            new_best = generation_eval()
        due = t.checkpoint_interval and state.step % t.checkpoint_interval == 0
        if (due or new_best) and state.step < total_steps:
            save(state.metrics)

    # ---- final evaluation and export
    final = evaluate(setup, accelerator) if setup.dev_set is not None else {}
    if final:
        state.metrics = final
        state.best_metric = best(state.best_metric, final["dev_ce"])
        sink.emit(event("eval", state, micro_per_epoch, final))
    if ev.interval is not None and setup.dev_records:
        generation_eval()
        final = dict(state.metrics)
    exported = {**last_metrics, **final}
    export_dir = None
    if accelerator.is_main_process:
        from dskd_core.export import export_student

        if t.checkpoint_interval:
            save(final)
        student = accelerator.unwrap_model(module).student
        if ev.select_best and state.best_step is not None and state.best_step != state.step:
            # Training is over: the student may take the best checkpoint's weights for the export.
            load_student(step_dir(run_dir, state.best_step), student)
            exported = {**last_metrics, **state.best_metrics}
        if ev.interval is not None:
            exported["exported_step"] = float(state.best_step if ev.select_best else state.step)
        export_dir = export_student(
            run_dir / "export",
            student=student,
            tokenizer=setup.student_tokenizer,
            spec=spec,
            projectors=export_state(distiller),
            metrics=exported,
        )
        sink.emit(event("exported", state, micro_per_epoch, exported, message=str(export_dir)))
    accelerator.wait_for_everyone()
    return RunResult("completed", state.step, total_steps, export_dir, exported)


# ---------------------------------------------------------------------------------------------- set-up helpers


def make_accelerator(precision: str, device: str | None):
    """An Accelerator for this job: bf16 autocast or full fp32, on the CPU when asked or when there is no GPU."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
    if device and device.startswith("cuda:"):
        torch.cuda.set_device(torch.device(device))
    mixed = "bf16" if precision == "bf16" else "no"
    try:
        return Accelerator(mixed_precision=mixed, cpu=cpu)
    except ValueError:
        # A long-lived single-process worker ran an earlier job with another precision: start a fresh state.
        if AcceleratorState().num_processes > 1:
            raise
        AcceleratorState._reset_state()
        return Accelerator(mixed_precision=mixed, cpu=cpu)


def prepare(spec: JobSpec, device: torch.device, *, run_dir: str | Path | None = None) -> Setup:
    """Pre-flight and construction: tokenizers, pair compatibility, models, datasets, distiller.

    SeqKD reads the teacher's responses generated beforehand (`seqkd.ensure_teacher_responses`) and needs no
    teacher model here.
    """
    from dskd_core.data.build import build_datasets
    from dskd_core.preflight import check_pair

    import_distillers()
    try:
        distiller_class = get_distiller_class(spec.distill.method)
    except ValueError as e:
        raise PreflightError(str(e)) from None
    info = spec.method_info
    student_tok = models.load_tokenizer(spec.student)
    teacher_tok = models.load_tokenizer(spec.teacher) if info.needs_teacher and spec.teacher else None
    if info.vocabulary != "none" and teacher_tok is not None:
        check_pair(spec.distill.method, teacher_tok, student_tok)  # PreflightError naming the valid methods
    dual = info.vocabulary == "cross"
    student = models.load_model(spec.student, trainable=True, device=device)
    teacher = None
    if info.needs_teacher and info.vocabulary != "none" and spec.teacher is not None:
        teacher = models.load_model(spec.teacher, trainable=False, device=device)
    vocab_map = None
    if dual:
        from dskd_core.alignment import build_vocab_map
        from dskd_core.distillers.cross import alignments_for

        # Only the alignment the method reads is computed (MinED's DP is the costly one).
        alignments = alignments_for(spec.distill.method)
        data = build_datasets(spec, student_tok, teacher_tok, dual=True, alignments=alignments)
        vocab_map = build_vocab_map(teacher_tok, student_tok).to(device)
    elif spec.distill.method == "seqkd":
        from dskd_core.seqkd import seqkd_datasets, seqkd_path

        data = seqkd_datasets(spec, student_tok, seqkd_path(spec, run_dir))
    else:
        data = build_datasets(spec, student_tok, None, dual=False)
    ctx = DistillContext(spec, student, teacher, student_tok, teacher_tok, vocab_map=vocab_map)
    distiller = distiller_class(ctx).to(device)
    return Setup(
        student,
        teacher,
        student_tok,
        teacher_tok,
        distiller,
        data.train,
        data.dev,
        data.collator,
        data.train_records,
        data.dev_records,
    )


def check_same_job(checkpoint: Path, spec: JobSpec) -> None:
    """Refuse to resume a checkpoint of another job (other models or method) in the same run directory."""
    import json

    saved = JobSpec.model_validate_json(json.loads((checkpoint / "state.json").read_text())["spec_json"])
    for label, old, new in [
        ("student", saved.student, spec.student),
        ("teacher", saved.teacher, spec.teacher),
        ("distill.method", saved.distill.method, spec.distill.method),
    ]:
        if old != new:
            raise PreflightError(
                f"{checkpoint.parent.parent} holds checkpoints of another job ({label} differs); "
                "use a new run directory or delete its checkpoints/"
            )


def import_distillers() -> None:
    """Import every distiller module so that its @register has run (the registry is filled on import)."""
    import importlib
    import pkgutil

    import dskd_core.distillers as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in {"base", "common"}:
            importlib.import_module(f"dskd_core.distillers.{info.name}")


def lr_lambda(schedule: str, warmup_ratio: float, total_steps: int):
    """Multiplier of the peak LR at a step: linear warmup, then cosine/linear decay to 0 or constant."""
    warmup = int(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


# ------------------------------------------------------------------------------------------------ loop helpers


def batch_stream(
    setup: Setup, batch_size: int, seed: int, epoch: int, start: int, accelerator
) -> Iterator[tuple[tuple[int, int], dict[str, torch.Tensor]]]:
    """Micro-batches forever, each with the data position AFTER it: (epoch, micro-batches consumed in it).

    Each epoch's order is a permutation drawn from (seed, epoch) alone, so resuming at (epoch, start) replays
    exactly the batches an uninterrupted run would have seen, without storing the order.
    """
    from dskd_core.data.batching import epoch_order

    n, rank, world = len(setup.train_set), accelerator.process_index, accelerator.num_processes
    global_batch = batch_size * world
    per_epoch = math.ceil(n / global_batch)
    while True:
        order = epoch_order(epoch, seed, n)
        order += order[: per_epoch * global_batch - n]  # every rank gets a full share of the last batch
        for i in range(start, per_epoch):
            chunk = order[i * global_batch : (i + 1) * global_batch][
                rank * batch_size : (rank + 1) * batch_size
            ]
            if world == 1:
                chunk = chunk[: n - i * batch_size]  # one process: no padding, the last batch may be short
            batch = setup.collate([setup.train_set[j] for j in chunk])
            position = (epoch, i + 1) if i + 1 < per_epoch else (epoch + 1, 0)
            yield position, {k: v.to(accelerator.device) for k, v in batch.items()}
        epoch, start = epoch + 1, 0


def count_tokens(micro_batches: list[dict[str, Any]], accelerator) -> TokenCounts:
    """Valid label tokens of the whole step: all micro-batches, summed over ranks.

    When any micro-batch carries an on-policy KD batch ("kd"), `kd_student`/`kd_teacher` count the KD batches of
    the step (the sample where there is one, else the reference batch), and every micro-batch uses them.
    """

    def labels(batches: list[dict[str, Any]]) -> list[torch.Tensor]:
        student = sum((b["labels"] != IGNORE_INDEX).sum() for b in batches)
        teacher = sum((b["teacher_labels"] != IGNORE_INDEX).sum() for b in batches if "teacher_labels" in b)
        return [torch.as_tensor(student), torch.as_tensor(teacher)]

    kd_batches = [b.get("kd", b) for b in micro_batches]
    sampled = sum(1 for b in micro_batches if "kd" in b)
    values = [*labels(micro_batches), *labels(kd_batches), torch.as_tensor(sampled)]
    counts = accelerator.reduce(torch.stack(values).to(accelerator.device).float(), reduction="sum")
    if float(counts[4]) == 0:  # no sample anywhere in the step: the ordinary single-batch path
        return TokenCounts(student=float(counts[0]), teacher=float(counts[1]))
    return TokenCounts(
        float(counts[0]), float(counts[1]), kd_student=float(counts[2]), kd_teacher=float(counts[3])
    )


def train_step(
    module: nn.Module, micro_batches: list[dict[str, torch.Tensor]], accelerator
) -> tuple[dict, float]:
    """Forward and backward over the step's micro-batches; returns token-weighted metrics and the token count."""
    tokens = count_tokens(micro_batches, accelerator)
    # DDP averages gradients over ranks, but each rank's loss is already divided by the global count: undo it.
    scale = accelerator.num_processes
    totals: dict[str, float] = {}
    loss = torch.zeros((), device=accelerator.device)
    for i, batch in enumerate(micro_batches):
        n_local = float((batch["labels"] != IGNORE_INDEX).sum())
        sync = accelerator.no_sync(module) if i < len(micro_batches) - 1 else nullcontext()
        with sync:
            out = module(batch, tokens)
            accelerator.backward(out.loss * scale)
        # Distillers report per-token means of their micro-batch: weight them by its tokens.
        for name, value in out.metrics.items():
            totals[name] = totals.get(name, 0.0) + value * n_local
        loss += out.loss.detach().float()
    local_tokens = sum(float((b["labels"] != IGNORE_INDEX).sum()) for b in micro_batches)
    metrics = {name: value / max(local_tokens, 1.0) for name, value in totals.items()}
    # Each micro-batch loss is already a share of the step mean: their sum over ranks is the step's loss.
    metrics["loss"] = float(accelerator.reduce(loss, reduction="sum"))
    return metrics, tokens.student


@torch.no_grad()
def dev_ce(model: nn.Module, tokenizer: Any, batches: list[dict[str, torch.Tensor]], accelerator) -> float:
    """Mean response-token cross-entropy of `model` over `batches` (this rank's share, summed over ranks)."""
    head = models.output_head(model).weight[: len(tokenizer)]
    sums = torch.zeros(2, device=accelerator.device)
    for b in batches:
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
        {
            k: v.to(accelerator.device)
            for k, v in setup.collate([setup.dev_set[j] for j in indices[i : i + bs]]).items()
        }
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
            same_labels = setup.teacher is not None and "teacher_labels" not in batches[0]
            if with_teacher and same_labels:
                metrics["teacher_dev_ce"] = dev_ce(
                    setup.teacher, setup.student_tokenizer, batches, accelerator
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
    kind: str,
    state: TrainState,
    micro_per_epoch: int,
    metrics: dict[str, float] | None = None,
    message: str | None = None,
) -> ProgressEvent:
    epoch = state.epoch + state.batches_in_epoch / max(micro_per_epoch, 1)
    return ProgressEvent(kind, state.step, state.total_steps, epoch, dict(metrics or {}), message)
