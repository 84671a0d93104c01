"""SFT: cross-entropy on the reference responses only (the baseline every method is compared with)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dskd_core import models
from dskd_core.distillers.base import DistillContext, Distiller, LossOutput, TokenCounts, register
from dskd_core.distillers.common import (
    empty_loss,
    loss_chunk_rows,
    per_token_metrics,
    real_vocab_size,
    step_denominator,
    student_positions,
)
from dskd_core.fused import Head, fused_sum
from dskd_core.spec import Method

_SUMS = ("ce", "acc")


@register(Method.sft)
class SFTDistiller(Distiller):
    def __init__(self, ctx: DistillContext) -> None:
        super().__init__(ctx)
        self.vocab_size = real_vocab_size(ctx.student_tokenizer, models.output_head(ctx.student).weight)

    def forward(self, batch: dict[str, torch.Tensor], tokens: TokenCounts) -> LossOutput:
        hidden, labels = student_positions(self.student, batch)
        n = labels.numel()
        denominator = step_denominator(tokens, n)
        if n == 0:
            return LossOutput(empty_loss(hidden), {"loss": 0.0, **dict.fromkeys(_SUMS, 0.0)})
        head = models.output_head(self.student).weight[: self.vocab_size]

        def chunk(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            ce = F.cross_entropy(z, y, reduction="sum")
            return torch.stack([ce, (z.detach().argmax(-1) == y).sum().float()])

        loss, sums = fused_sum(
            chunk,
            [Head(hidden, head)],
            labels,
            weights=[1.0 / denominator, 0.0],
            chunk_rows=loss_chunk_rows(self.spec.distill, self.vocab_size),
        )
        metrics = per_token_metrics(_SUMS, sums, n)
        metrics["loss"] = metrics["ce"]
        return LossOutput(loss, metrics)
