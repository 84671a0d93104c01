"""Set-up: everything that can fail does so before the first step.

`start_run` builds a `Run` (models, data, distiller, optimizer, schedule) and resumes it from the newest
complete checkpoint of the run directory when there is one.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dskd_core import models
from dskd_core.checkpoint import TrainState, latest_checkpoint, load_checkpoint
from dskd_core.distillers import DistillContext, Distiller, get_distiller_class
from dskd_core.errors import PreflightError
from dskd_core.spec import JobSpec


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
    teacher_cache: Any | None = (
        None  # cache.fill.CachedTeacher once opened: batches carry the teacher's states
    )

    def collate_split(self, split: str, indices: list[int]) -> dict[str, torch.Tensor]:
        """Collate examples `indices` of "train" or "dev", with the cached teacher states when there are any."""
        data = self.train_set if split == "train" else self.dev_set
        batch = self.collate([data[j] for j in indices])
        if self.teacher_cache is not None:
            self.teacher_cache.attach(batch, split, indices)
        return batch


@dataclass
class Run:
    """One job being trained: its set-up, the optimizer and schedule, and the resumable state."""

    spec: JobSpec
    run_dir: Path
    accelerator: Any
    setup: Setup
    module: nn.Module  # TrainingModule (student + distiller), wrapped by accelerate (DDP when distributed)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: Any | None  # OnPolicySampler when distill.on_policy_ratio > 0
    state: TrainState
    micro_per_epoch: int  # (global) micro-batches per epoch
    resumed_from: Path | None = None
    last_saved: float = field(
        default_factory=time.monotonic
    )  # when a checkpoint was last written (or the start)
    last_evaluated: float = field(default_factory=time.monotonic)  # when the dev loss was last evaluated

    @property
    def total_steps(self) -> int:
        return self.state.total_steps

    @property
    def trainable(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]


def start_run(spec: JobSpec, run_dir: Path, accelerator: Any) -> Run:
    """Build the job's models, data, distiller, optimizer and schedule; resume from the newest checkpoint."""
    from dskd_core.training.step import TrainingModule

    t = spec.training
    setup = prepare(spec, accelerator.device, run_dir=run_dir)
    distiller = setup.distiller
    optimizer = torch.optim.AdamW(distiller.param_groups(), lr=t.lr, weight_decay=t.weight_decay)
    micro_per_epoch = math.ceil(
        len(setup.train_set) / t.batch_size
    )  # batch_size is global (step.batch_stream)
    total_steps = t.max_steps or max(1, math.ceil(t.epochs * micro_per_epoch / t.grad_accum))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(t.schedule, t.warmup_ratio, total_steps)
    )
    training_module = TrainingModule(setup.student, distiller, distributed=accelerator.num_processes > 1)
    module, optimizer = accelerator.prepare(training_module, optimizer)
    sampler = None
    if spec.distill.on_policy_ratio > 0:
        from dskd_core.onpolicy import OnPolicySampler

        sampler = OnPolicySampler(
            spec, setup.student, setup.student_tokenizer, setup.teacher_tokenizer, setup.collate
        )

    state = TrainState(total_steps=total_steps, spec_json=spec.to_json())
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None:
        check_same_job(checkpoint, spec)
        state = load_checkpoint(
            checkpoint, student=setup.student, distiller=distiller, optimizer=optimizer, scheduler=scheduler
        )
        state.total_steps = total_steps
    return Run(
        spec,
        run_dir,
        accelerator,
        setup,
        module,
        optimizer,
        scheduler,
        sampler,
        state,
        micro_per_epoch,
        resumed_from=checkpoint,
    )


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


def refuse_sharded_launch(accelerator: Any) -> None:
    """FSDP and DeepSpeed are not supported yet (design.md, "Several processes"): say so before anything loads."""
    kind = str(accelerator.distributed_type).rsplit(".", 1)[-1]
    if kind in {"FSDP", "DEEPSPEED", "MEGATRON_LM"}:
        raise PreflightError(
            f"this accelerate launch is configured for {kind}, which dskd does not support yet (the losses read "
            "the output heads' weights directly); use data-parallel processes (multi_gpu / num_processes)"
        )


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
