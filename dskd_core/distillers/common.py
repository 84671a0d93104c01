"""Helpers shared by the same-vocabulary distillers: valid positions, fp32 logits, reduction, vocabulary checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dskd_core import models
from dskd_core.distillers.base import DistillContext, TokenCounts
from dskd_core.losses import divergence_params
from dskd_core.reduce import chunk_rows
from dskd_core.spec import CROSS_VOCAB_METHODS, DistillSpec, Method

IGNORE_INDEX = -100


def same_vocabulary(tok_a: Any, tok_b: Any) -> bool:
    """True when two tokenizers map the same strings to the same ids and share their special tokens (but pad)."""
    if tok_a is tok_b:
        return True
    if tok_a.get_vocab() != tok_b.get_vocab():
        return False
    return _special_tokens(tok_a) == _special_tokens(tok_b)


def _special_tokens(tok: Any) -> dict[str, Any]:
    # Padding never reaches a label (-100 there), so a pad token set only on one side does not matter.
    specials = dict(getattr(tok, "special_tokens_map", {}) or {})
    specials.pop("pad_token", None)
    return specials


def require_same_vocabulary(ctx: DistillContext, method: Method) -> None:
    """Refuse a pair whose tokenizers differ: logits of the two models are not comparable column by column."""
    if ctx.teacher is None or ctx.teacher_tokenizer is None:
        raise ValueError(f"method '{method.value}' needs a teacher model and its tokenizer")
    if not same_vocabulary(ctx.student_tokenizer, ctx.teacher_tokenizer):
        raise ValueError(
            f"method '{method.value}' needs the teacher and the student to share one tokenizer, but their "
            f"vocabularies or special tokens differ; use a cross-vocabulary method instead: "
            f"{', '.join(CROSS_VOCAB_METHODS)}"
        )


def freeze_teacher(teacher: nn.Module) -> None:
    teacher.eval()
    teacher.requires_grad_(False)


def real_vocab_size(tokenizer: Any, *heads: torch.Tensor) -> int:
    """`len(tokenizer)`: the columns compared; embedding rows beyond it are padding and are ignored."""
    size = len(tokenizer)
    for w in heads:
        if w.shape[0] < size:
            raise ValueError(f"an output head has {w.shape[0]} rows but the tokenizer has {size} tokens")
    return size


def divergence_kwargs(distill: DistillSpec) -> dict[str, float]:
    """The spec.distill values (beta, skew_lambda, alpha) of the parameters the configured divergence takes."""
    return {name: float(getattr(distill, name)) for name in divergence_params(distill.divergence.value)}


def kd_scale(distill: DistillSpec) -> float:
    """τ² when asked for (compensates the 1/τ² shrink of soft-target gradients), else 1."""
    return distill.temperature**2 if distill.temperature_scaling == "tau2" else 1.0


def loss_chunk_rows(distill: DistillSpec, *widths: int) -> int:
    """Rows per loss chunk for heads of these vocabulary widths: `loss_chunk_size` if set, else the element
    budget `loss_chunk_elements` over the widths (`reduce.chunk_rows`)."""
    return chunk_rows(*widths, budget=distill.loss_chunk_elements, override=distill.loss_chunk_size)


def fp32(device: torch.device) -> torch.autocast:
    """A region where autocast is off: logits, softmaxes and projections run in fp32 even under bf16 training."""
    return torch.autocast(device_type=device.type, enabled=False)


def fp32_logits(hidden: torch.Tensor, head_weight: torch.Tensor) -> torch.Tensor:
    """`hidden @ head_weight.T` in fp32 (call inside `fp32(...)`)."""
    return hidden.float() @ head_weight.float().T


def student_positions(
    student: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's last hidden state at valid positions [N, d_s] and their labels [N]."""
    hidden = models.last_hidden_state(student, batch["input_ids"], batch["attention_mask"])
    valid = batch["labels"] != IGNORE_INDEX
    return hidden[valid], batch["labels"][valid]


def teacher_positions(teacher: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The teacher's last hidden state at the (same-tokenizer) valid positions [N, d_t], without a graph.

    Read from the batch when the teacher cache supplied it ("teacher_hidden", see `dskd_core.cache.fill`)."""
    if "teacher_hidden" in batch:
        return batch["teacher_hidden"][batch["labels"] != IGNORE_INDEX]
    if teacher.training:
        teacher.eval()
    with torch.no_grad():
        hidden = models.last_hidden_state(teacher, batch["input_ids"], batch["attention_mask"])
        return hidden[batch["labels"] != IGNORE_INDEX]


def step_denominator(tokens: TokenCounts, n_local: int) -> float:
    if n_local > tokens.student:
        raise ValueError(
            f"TokenCounts.student ({tokens.student}) is smaller than this micro-batch's valid tokens ({n_local}); "
            "it must count the whole optimisation step"
        )
    return max(float(tokens.student), 1.0)


def per_token_metrics(names: Sequence[str], sums: torch.Tensor, n_local: int) -> dict[str, float]:
    """Per-token means over this micro-batch (0 for an empty one), as plain floats."""
    values = (sums.detach().double() / max(n_local, 1)).tolist()
    return dict(zip(names, values, strict=True))


def empty_loss(anchor: torch.Tensor) -> torch.Tensor:
    """A zero loss still connected to the student's graph, so backward works on a batch without labels."""
    return anchor.float().sum() * 0.0
