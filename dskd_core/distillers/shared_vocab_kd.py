"""KD on the shared sub-vocabulary (methods.md §3.3, last paragraph): (1 − r)·CE + r·KD.

At every exactly aligned position (`eta_teacher_index`), the teacher's logits of the shared tokens and the
student's logits of their counterparts are each renormalised over those shared columns only, and compared with
the configured divergence D(student ‖ teacher). CE on gold runs over every student response position.

Choices: one column per shared student id (`cross.shared_pairs`: the lowest teacher id when several coincide);
the KD sum is divided by the step's student token count (like every student-side term), so positions without a
pair add 0 rather than being averaged away; metrics are per-token means over this micro-batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dskd_core import models
from dskd_core.distillers.base import DistillContext, LossOutput, TokenCounts, register
from dskd_core.distillers.common import (
    divergence_kwargs,
    empty_loss,
    kd_scale,
    loss_chunk_rows,
    per_token_metrics,
    step_denominator,
)
from dskd_core.distillers.cross import (
    CrossDistiller,
    aligned_rows,
    masked_sum,
    setup_cross,
)
from dskd_core.fused import Head, fused_sum
from dskd_core.losses import divergence
from dskd_core.spec import Method

_SUMS = ("ce", "kd_divergence", "align_ratio", "acc", "shared_agreement")


@register(Method.shared_vocab_kd)
class SharedVocabKDDistiller(CrossDistiller):
    def __init__(self, ctx: DistillContext) -> None:
        super().__init__(ctx)
        self.teacher_vocab, self.vocab_size = setup_cross(ctx, Method.shared_vocab_kd)
        self.register_shared_columns(ctx)
        if self.shared_teacher_ids.numel() == 0:
            raise ValueError("shared_vocab_kd: the two vocabularies share no token")

    def loss_from_hidden(
        self, batch: dict[str, torch.Tensor], h_s: torch.Tensor, h_t: torch.Tensor, tokens: TokenCounts
    ) -> LossOutput:
        d = self.spec.distill
        rows = aligned_rows(h_s, h_t, batch["eta_teacher_index"], batch["labels"], batch["teacher_labels"])
        n = rows.n
        denominator = step_denominator(tokens, n)
        if n == 0:
            return LossOutput(empty_loss(h_s), {"loss": 0.0, "kd": 0.0, **dict.fromkeys(_SUMS, 0.0)})
        w_s = models.output_head(self.student).weight[: self.vocab_size]
        # Only the shared rows of the teacher head are ever needed.
        w_t_shared = models.output_head(self.teacher).weight.detach()[self.shared_teacher_ids]
        s_cols = self.shared_student_ids
        name, params = d.divergence.value, divergence_kwargs(d)

        def chunk(z_s: torch.Tensor, z_t: torch.Tensor, y: torch.Tensor, al: torch.Tensor) -> torch.Tensor:
            ce = F.cross_entropy(z_s, y, reduction="sum")
            shared_student = z_s[:, s_cols]
            kd = divergence(name, shared_student, z_t, temperature=d.temperature, **params)
            agree = al & (shared_student.detach().argmax(-1) == z_t.argmax(-1))
            acc = z_s.detach().argmax(-1) == y
            return torch.stack(
                [ce, masked_sum(kd, al), al.sum().float(), acc.sum().float(), agree.sum().float()]
            )

        scale = kd_scale(d)
        loss, sums = fused_sum(
            chunk,
            [Head(rows.h_s, w_s), Head(rows.h_t, w_t_shared)],
            rows.labels,
            rows.aligned,
            weights=[(1.0 - d.kd_rate) / denominator, d.kd_rate * scale / denominator, 0.0, 0.0, 0.0],
            chunk_rows=loss_chunk_rows(d, self.vocab_size, w_t_shared.shape[0]),
        )
        metrics = per_token_metrics(_SUMS, sums, n)
        metrics["kd"] = scale * metrics["kd_divergence"]
        metrics["loss"] = (1.0 - d.kd_rate) * metrics["ce"] + d.kd_rate * metrics["kd"]
        return LossOutput(loss, metrics)
