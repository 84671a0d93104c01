"""Universal Logit Distillation (methods.md §3.4): (1 − r)·CE + r·ULD.

ULD at a pair of positions = Σ_k |sort_desc(q)_k − sort_desc(p)_k|, with q = softmax(student/τ) and
p = softmax(teacher/τ) over each model's real vocabulary, the shorter sorted vector padded with zeros. Positions
are paired in order: the k-th student response position with the k-th teacher response position, up to the
shorter response (`cross.in_order_index`).

Fixes over the published code (§6): τ is applied, and the sort produces new tensors (`torch.sort` values; nothing
is reordered in place), so autograd sees an ordinary permutation. The ULD sum is divided by the step's student
token count; `temperature_scaling: tau2` multiplies it by τ² like every other KD term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dskd_core import models
from dskd_core.distillers.base import DistillContext, LossOutput, TokenCounts, register
from dskd_core.distillers.common import (
    empty_loss,
    kd_scale,
    loss_chunk_rows,
    per_token_metrics,
    step_denominator,
)
from dskd_core.distillers.cross import CrossDistiller, aligned_rows, in_order_index, masked_sum, setup_cross
from dskd_core.fused import Head, fused_sum
from dskd_core.spec import Method

_SUMS = ("ce", "uld", "align_ratio", "acc")


def sorted_l1(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row Σ|sort_desc(softmax(q/τ)) − sort_desc(softmax(p/τ))|, the shorter vocabulary zero-padded."""
    q = torch.softmax(student_logits.float() / temperature, dim=-1)
    p = torch.softmax(teacher_logits.float() / temperature, dim=-1)
    q_sorted = torch.sort(q, dim=-1, descending=True).values
    p_sorted = torch.sort(p, dim=-1, descending=True).values
    width = max(q_sorted.shape[-1], p_sorted.shape[-1])
    q_sorted = F.pad(q_sorted, (0, width - q_sorted.shape[-1]))
    p_sorted = F.pad(p_sorted, (0, width - p_sorted.shape[-1]))
    return (q_sorted - p_sorted).abs().sum(-1)


@register(Method.uld)
class ULDDistiller(CrossDistiller):
    def __init__(self, ctx: DistillContext) -> None:
        super().__init__(ctx)
        self.teacher_vocab, self.vocab_size = setup_cross(ctx, Method.uld)

    def loss_from_hidden(
        self, batch: dict[str, torch.Tensor], h_s: torch.Tensor, h_t: torch.Tensor, tokens: TokenCounts
    ) -> LossOutput:
        d = self.spec.distill
        index = in_order_index(batch["labels"], batch["teacher_labels"])
        rows = aligned_rows(h_s, h_t, index, batch["labels"], batch["teacher_labels"])
        n = rows.n
        denominator = step_denominator(tokens, n)
        if n == 0:
            return LossOutput(empty_loss(h_s), {"loss": 0.0, "kd": 0.0, **dict.fromkeys(_SUMS, 0.0)})
        w_s = models.output_head(self.student).weight[: self.vocab_size]
        w_t = models.output_head(self.teacher).weight[: self.teacher_vocab].detach()

        def chunk(z_s: torch.Tensor, z_t: torch.Tensor, y: torch.Tensor, al: torch.Tensor) -> torch.Tensor:
            ce = F.cross_entropy(z_s, y, reduction="sum")
            uld = sorted_l1(z_s, z_t, d.temperature)
            acc = z_s.detach().argmax(-1) == y
            return torch.stack([ce, masked_sum(uld, al), al.sum().float(), acc.sum().float()])

        scale = kd_scale(d)
        loss, sums = fused_sum(
            chunk,
            [Head(rows.h_s, w_s), Head(rows.h_t, w_t)],
            rows.labels,
            rows.aligned,
            weights=[(1.0 - d.kd_rate) / denominator, d.kd_rate * scale / denominator, 0.0, 0.0],
            chunk_rows=loss_chunk_rows(d, self.vocab_size, self.teacher_vocab),
        )
        metrics = per_token_metrics(_SUMS, sums, n)
        metrics["kd"] = scale * metrics["uld"]
        metrics["loss"] = (1.0 - d.kd_rate) * metrics["ce"] + d.kd_rate * metrics["kd"]
        return LossOutput(loss, metrics)
