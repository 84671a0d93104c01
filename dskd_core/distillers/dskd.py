"""Dual-Space KD on one shared vocabulary (methods.md §2.2).

Student space: z_t2s = P_t2s(h_t) · W_s^T (student head detached); L_ce_t2s = CE(z_t2s, y) trains P_t2s and
L_kd_stu = D(student logits ‖ stop_grad(z_t2s)) trains the student. Teacher space: z_s2t = P_s2t(h_s) · W_t^T
(teacher head frozen); L_kd_tea = D(z_s2t ‖ teacher logits) trains P_s2t (if it has parameters) and the
student body. KD = L_kd_stu + L_ce_t2s + L_kd_tea; loss = (1 − r)·CE + r·KD.

Choices beyond the paper's text:
- v2 sums L_kd_stu only over positions where argmax z_t2s equals the teacher's argmax, but still divides by
  the step's valid-token count (not by the number of agreeing positions): the mean then stays independent of
  how the step is split into micro-batches, and it matches how the published code normalises its masked sum.
- `temperature_scaling: tau2` scales the two divergence terms only; L_ce_t2s is a plain (τ = 1) CE.
- Metrics are per-token means over this micro-batch; `kd` is the KD term as it enters the loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dskd_core import models
from dskd_core.distillers.base import DistillContext, Distiller, LossOutput, TokenCounts, register
from dskd_core.distillers.common import (
    divergence_kwargs,
    empty_loss,
    fp32,
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
from dskd_core.fused_terms import Terms, TermsBlock
from dskd_core.projectors import PseudoInverseProjector, ideal_t2s, random_linear
from dskd_core.spec import Method

_SUMS = ("ce", "kd_student_space", "ce_t2s", "kd_teacher_space", "t2s_acc", "agreement", "s2t_acc")


@register(Method.dskd)
class DSKDDistiller(Distiller):
    def __init__(self, ctx: DistillContext) -> None:
        super().__init__(ctx)
        require_same_vocabulary(ctx, Method.dskd)
        freeze_teacher(ctx.teacher)
        w_s = models.output_head(ctx.student).weight
        w_t = models.output_head(ctx.teacher).weight
        self.vocab_size = real_vocab_size(ctx.student_tokenizer, w_s, w_t)
        d = self.spec.distill
        # Columns the pseudo-inverses are fitted on: the real vocabulary, or its first topk_vocab entries.
        self.fit_size = min(d.topk_vocab or self.vocab_size, self.vocab_size)
        self.ideal = d.projector_init == "ideal"
        if self.ideal:
            k = self.fit_size
            self.t2s = ideal_t2s(w_t[:k], w_s[:k])
            self.s2t: torch.nn.Module = PseudoInverseProjector(w_t[:k])
        else:
            self.t2s = random_linear(w_t.shape[1], w_s.shape[1], w_s.device)
            self.s2t = random_linear(w_s.shape[1], w_t.shape[1], w_s.device)

    def _s2t_map(self) -> Callable[[torch.Tensor], torch.Tensor]:
        if not self.ideal:
            return self.s2t
        # Recomputed from the current student head once per micro-batch (it tracks the head as it trains).
        p = self.s2t.matrix(models.output_head(self.student).weight[: self.fit_size])
        return lambda h: h @ p

    def export_state(self) -> dict[str, torch.Tensor]:
        """Projector weights in Linear layout (`t2s.weight`, `s2t.weight`, biases for random init)."""
        state = super().export_state()
        if self.ideal:
            state["s2t.weight"] = self.s2t.weight_from(
                models.output_head(self.student).weight[: self.fit_size]
            )
        return state

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
        t2s, s2t = self.t2s, self._s2t_map()
        name, params, v2 = d.divergence.value, divergence_kwargs(d), d.dskd_variant == "v2"
        with fp32(h_s.device):
            heads = [
                Head(h_s, w_s),
                Head(h_t, w_t),
                # Student space: the projected teacher read out by the (detached) student head.
                Head(t2s(h_t.float()), w_s.detach()),
                # Teacher space: the projected student read out by the frozen teacher head.
                Head(s2t(h_s.float()), w_t),
            ]

        def chunk(t: Terms, y: torch.Tensor) -> None:
            # heads: 0 student, 1 teacher, 2 t2s (student space), 3 s2t (teacher space); sums as in _SUMS
            teacher_top, t2s_top, s2t_top = t.argmax(1), t.argmax(2), t.argmax(3)
            agree = t2s_top == teacher_top
            t.ce(0, head=0, target=y, ignore_index=None)  # y: valid labels only
            t.divergence(1, q=0, p=2, mask=agree if v2 else None)
            t.ce(2, head=2, target=teacher_top if v2 else y, ignore_index=None)
            t.divergence(3, q=3, p=1)
            t.count(4, t2s_top == y)
            t.count(5, agree)
            t.count(6, s2t_top == y)

        scale = kd_scale(d)
        # loss = ((1 − r)·CE + r·(scale·(KD_stu + KD_tea) + CE_t2s)) / the step's token count
        weights = [1.0 - rate, rate * scale, rate, rate * scale, 0.0, 0.0, 0.0]
        loss, sums = fused_sum(
            TermsBlock(chunk, n_sums=len(_SUMS), divergence=name, temperature=d.temperature, **params),
            heads,
            labels,
            weights=[w / denominator for w in weights],
            chunk_rows=loss_chunk_rows(d, *[self.vocab_size] * len(heads)),
        )
        metrics = per_token_metrics(_SUMS, sums, n)
        metrics["kd"] = (
            scale * (metrics["kd_student_space"] + metrics["kd_teacher_space"]) + metrics["ce_t2s"]
        )
        metrics["loss"] = (1.0 - rate) * metrics["ce"] + rate * metrics["kd"]
        return LossOutput(loss, metrics)
