"""Vanilla white-box KD (methods.md §2.1): (1 − r)·CE + r·D(student ‖ teacher) on the shared vocabulary."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dskd_core import models
from dskd_core.distillers.base import DistillContext, Distiller, LossOutput, TokenCounts, register
from dskd_core.distillers.common import (
    divergence_kwargs,
    empty_loss,
    fp32,
    fp32_logits,
    freeze_teacher,
    kd_scale,
    per_token_metrics,
    real_vocab_size,
    require_same_vocabulary,
    step_denominator,
    student_positions,
    teacher_positions,
)
from dskd_core.losses import divergence
from dskd_core.reduce import chunked_sum
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
        params = divergence_kwargs(d)

        def chunk(hs: torch.Tensor, ht: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with fp32(hs.device):
                student_logits = fp32_logits(hs, w_s)
                teacher_logits = fp32_logits(ht, w_t)
                ce = F.cross_entropy(student_logits, y, reduction="sum")
                kd = divergence(
                    d.divergence.value, student_logits, teacher_logits, temperature=d.temperature, **params
                )
                s_top = student_logits.detach().argmax(-1)
                return torch.stack(
                    [
                        ce,
                        kd.sum(),
                        (s_top == y).sum().float(),
                        (s_top == teacher_logits.argmax(-1)).sum().float(),
                    ]
                )

        sums = chunked_sum(chunk, h_s, h_t, labels, chunk_size=d.loss_chunk_size)
        ce, kd = sums[0], kd_scale(d) * sums[1]
        loss = ((1.0 - rate) * ce + rate * kd) / denominator
        metrics = per_token_metrics(_SUMS, sums, n)
        metrics["kd"] = kd_scale(d) * metrics["kd_divergence"]
        metrics["loss"] = (1.0 - rate) * metrics["ce"] + rate * metrics["kd"]
        return LossOutput(loss, metrics)
