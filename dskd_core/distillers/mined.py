"""MinED (methods.md §3.4): (1 − r)·CE + r·KD with KD = FKL(target ‖ student).

At student positions that the edit-distance alignment pairs 1:1 with a teacher position (`mined_teacher_index`
≥ 0, computed in the data pipeline), the target is the teacher's distribution carried into the student
vocabulary: student column j gets the teacher logit of the teacher token that maps to j (`cross.shared_pairs`:
the lowest teacher id when several share j's canonical bytes); student columns with no teacher counterpart get
`UNMAPPED_LOGIT`, finite, so no −inf ever reaches the divergence. Elsewhere the target is one-hot on the gold
token, for which FKL(onehot ‖ q_τ) = −log q_τ(gold), i.e. CE of the student logits divided by τ.

τ applies to both sides of the aligned term; the KD sum is divided by the step's student token count.
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
from dskd_core.distillers.cross import (
    CrossDistiller,
    aligned_rows,
    setup_cross,
)
from dskd_core.fused import Head, fused_sum
from dskd_core.losses import divergence
from dskd_core.spec import Method

UNMAPPED_LOGIT = -1.0e4  # far below any real logit: probability 0 after softmax, but no inf arithmetic
_SUMS = ("ce", "kd_divergence", "align_ratio", "acc", "teacher_agreement")


def remap_teacher_logits(
    teacher_logits: torch.Tensor, teacher_ids: torch.Tensor, student_ids: torch.Tensor, student_vocab: int
) -> torch.Tensor:
    """`[N, V_s]` logits: column student_ids[k] ← teacher_logits[:, teacher_ids[k]], every other column low."""
    out = teacher_logits.new_full((teacher_logits.shape[0], student_vocab), UNMAPPED_LOGIT)
    return out.index_copy(1, student_ids, teacher_logits[:, teacher_ids])


@register(Method.mined)
class MinEDDistiller(CrossDistiller):
    def __init__(self, ctx: DistillContext) -> None:
        super().__init__(ctx)
        self.teacher_vocab, self.vocab_size = setup_cross(ctx, Method.mined)
        self.register_shared_columns(ctx)

    def loss_from_hidden(
        self, batch: dict[str, torch.Tensor], h_s: torch.Tensor, h_t: torch.Tensor, tokens: TokenCounts
    ) -> LossOutput:
        d = self.spec.distill
        rows = aligned_rows(h_s, h_t, batch["mined_teacher_index"], batch["labels"], batch["teacher_labels"])
        n = rows.n
        denominator = step_denominator(tokens, n)
        if n == 0:
            return LossOutput(empty_loss(h_s), {"loss": 0.0, "kd": 0.0, **dict.fromkeys(_SUMS, 0.0)})
        w_s = models.output_head(self.student).weight[: self.vocab_size]
        w_t_shared = models.output_head(self.teacher).weight.detach()[self.shared_teacher_ids]
        s_cols = self.shared_student_ids
        all_cols = torch.arange(s_cols.numel(), device=s_cols.device)
        tau = d.temperature

        def chunk(z_s: torch.Tensor, z_t: torch.Tensor, y: torch.Tensor, al: torch.Tensor) -> torch.Tensor:
            ce = F.cross_entropy(z_s, y, reduction="sum")
            target = remap_teacher_logits(z_t, all_cols, s_cols, self.vocab_size)
            soft = divergence("fkl", z_s, target, temperature=tau)
            one_hot = F.cross_entropy(z_s / tau, y, reduction="none")
            kd = torch.where(al, soft, one_hot)
            s_top = z_s.detach().argmax(-1)
            agree = al & (s_top == target.argmax(-1))
            return torch.stack(
                [ce, kd.sum(), al.sum().float(), (s_top == y).sum().float(), agree.sum().float()]
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
