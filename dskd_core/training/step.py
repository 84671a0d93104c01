"""One optimisation step: the micro-batch stream, the step's token counts, forward/backward, the update.

Loss normalisation (design.md "Losses"): every loss term is a sum over valid tokens divided by the valid-token
count of the WHOLE optimisation step (all micro-batches of the gradient accumulation, all ranks). So the step
first fetches its micro-batches, counts their labels, and each micro-batch's backward adds its share: the
gradients are summed, not averaged, and the result does not depend on how the step was split.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dskd_core.distillers import Distiller, TokenCounts
from dskd_core.errors import NonFiniteLossError

if TYPE_CHECKING:
    from dskd_core.training.setup import Run, Setup

IGNORE_INDEX = -100
Position = tuple[int, int]  # (epoch, micro-batches consumed in it) after a micro-batch


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


def batch_stream(
    setup: Setup, batch_size: int, seed: int, epoch: int, start: int, accelerator
) -> Iterator[tuple[Position, dict[str, torch.Tensor]]]:
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
            batch = setup.collate_split("train", chunk)
            position = (epoch, i + 1) if i + 1 < per_epoch else (epoch + 1, 0)
            yield position, {k: v.to(accelerator.device) for k, v in batch.items()}
        epoch, start = epoch + 1, 0


def optimizer_step(
    run: Run, micro_batches: list[tuple[Position, dict[str, torch.Tensor]]]
) -> tuple[dict[str, float], float]:
    """Train on one step's micro-batches and update the weights; returns the step's metrics and token count.

    Advances `run.state` (step, data position). Raises NonFiniteLossError before the update when the loss is
    not finite, so a diverged step never reaches the weights or a checkpoint.
    """
    state, t = run.state, run.spec.training
    sampled = 0
    if run.sampler is not None:
        sampled = run.sampler.attach(micro_batches, state.step, run.accelerator.process_index)
    state.epoch, state.batches_in_epoch = micro_batches[-1][0]
    metrics, n_tokens = train_step(run.module, [b for _, b in micro_batches], run.accelerator)
    if not math.isfinite(metrics["loss"]):
        raise NonFiniteLossError(
            f"the training loss became {metrics['loss']} at step {state.step + 1}: lower training.lr, "
            "keep training.max_grad_norm set, or use precision fp32"
        )
    if t.max_grad_norm is not None:
        # grad_norm: the norm before clipping (what clip_grad_norm_ returns); grad_norm_clipped: the norm of the
        # gradients the update actually uses, measured again after clipping (local to this process).
        metrics["grad_norm"] = float(run.accelerator.clip_grad_norm_(run.trainable, t.max_grad_norm))
        grads = [p.grad for p in run.trainable if p.grad is not None]
        metrics["grad_norm_clipped"] = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
    metrics["lr"] = run.scheduler.get_last_lr()[0]
    if run.sampler is not None:
        metrics["on_policy"] = sampled / len(micro_batches)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    return metrics, n_tokens


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
