"""Vanilla white-box KD (methods.md §2.1): (1 − r)·CE + r·D(student ‖ teacher) on the shared vocabulary."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dskd_core import models
from dskd_core.distillers.base import DistillContext, Distiller, LossOutput, TokenCounts, register
from dskd_core.distillers.common import (
    divergence_kwargs,
    empty_loss,
    freeze_teacher,
    kd_scale,
    loss_chunk_rows,
    per_token_metrics,
    real_vocab_size,
    require_same_vocabulary,
    step_denominator,
    student_positions,
    teacher_positions,
)
from dskd_core.fused import Head, fused_sum
from dskd_core.losses import divergence
from dskd_core.spec import Method

_SUMS = ("ce", "kd_divergence", "acc", "agreement")


@register(Method.vanilla_kd)
class VanillaKDDistiller(Distiller):
    """Metrics: `kd` is the KD term as it enters the loss (τ²-scaled if asked), `kd_divergence` the raw mean."""

    def __init__(self, ctx: DistillContext) -> None:
        super().__init__(ctx)
        require_same_vocabulary(ctx, Method.vanilla_kd)
        freeze_teacher(ctx.teacher)
        self.vocab_size = real_vocab_size(
            ctx.student_tokenizer,
            models.output_head(ctx.student).weight,
            models.output_head(ctx.teacher).weight,
        )

    def forward(
        self, batch: dict[str, torch.Tensor], tokens: TokenCounts, *, kd_rate: float | None = None
    ) -> LossOutput:
        d = self.spec.distill
        rate = d.kd_rate if kd_rate is None else kd_rate  # split_loss asks for the KD part alone (1.0)
        h_s, labels = student_positions(self.student, batch)
        h_t = teacher_positions(self.teacher, batch)
        n = labels.numel()
        denominator = step_denominator(tokens, n)
        if n == 0:
            return LossOutput(empty_loss(h_s), {"loss": 0.0, "kd": 0.0, **dict.fromkeys(_SUMS, 0.0)})
        w_s = models.output_head(self.student).weight[: self.vocab_size]
        w_t = models.output_head(self.teacher).weight[: self.vocab_size].detach()
        name, params, tau = d.divergence.value, divergence_kwargs(d), d.temperature

        def chunk(
            student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor
        ) -> torch.Tensor:
            ce = F.cross_entropy(student_logits, y, reduction="sum")
            kd = divergence(name, student_logits, teacher_logits, temperature=tau, **params)
            s_top = student_logits.detach().argmax(-1)
            return torch.stack(
                [ce, kd.sum(), (s_top == y).sum().float(), (s_top == teacher_logits.argmax(-1)).sum().float()]
            )

        scale = kd_scale(d)
        loss, sums = fused_sum(
            chunk,
            [Head(h_s, w_s), Head(h_t, w_t)],
            labels,
            weights=[(1.0 - rate) / denominator, rate * scale / denominator, 0.0, 0.0],
            chunk_rows=loss_chunk_rows(d, self.vocab_size, self.vocab_size),
        )
        metrics = per_token_metrics(_SUMS, sums, n)
        metrics["kd"] = scale * metrics["kd_divergence"]
        metrics["loss"] = (1.0 - rate) * metrics["ce"] + rate * metrics["kd"]
        return LossOutput(loss, metrics)
