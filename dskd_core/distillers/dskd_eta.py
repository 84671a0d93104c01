"""DSKD with Exact Token Alignment (methods.md §3.3, DSKD v2 across vocabularies).

Pairs (teacher position i, student position j) come precomputed as `eta_teacher_index` (the data pipeline aligns;
the training step only gathers). On the aligned pairs, the DSKD terms of §2.2:
- student space: z_t2s = P_t2s(h_t[i]) · W_s^T (student head detached); its label is the teacher's argmax at i
  carried into the student vocabulary by the id table (v2; unmapped → the position is ignored by this CE and by
  the agreement rule), or the gold student label (v1). L_ce_t2s = CE(z_t2s, label);
  L_kd_stu = D(student logits ‖ stop_grad(z_t2s)), v2: only where argmax z_t2s equals the mapped teacher argmax.
- teacher space: z_s2t = P_s2t(h_s[j]) · W_t^T (teacher head frozen); L_kd_tea = D(z_s2t ‖ teacher logits at i).
CE on gold runs over every student response position. loss = (1 − r)·CE + r·(L_kd_stu + L_ce_t2s + L_kd_tea);
every sum is divided by the step's student token count (pairs are counted on the student side).

Ideal initialisation works on the shared vocabulary: the least-squares t2s map fitted on the rows of W_t and W_s
of mapped token pairs (`cross.shared_pairs`), and the parameter-free s2t map P = W_s[S]^T · pinv(W_t[T]^T) from
the same rows (recomputed each step from the current student head). `topk_vocab` keeps the first k pairs.
Metrics: `align_ratio`, `mapped_label_ratio` (aligned positions whose teacher argmax has a student counterpart,
per student token), `agreement`, `t2s_acc` (argmax z_t2s = gold), `s2t_acc` (argmax z_s2t = teacher argmax).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dskd_core import models
from dskd_core.distillers.base import DistillContext, LossOutput, TokenCounts, register
from dskd_core.distillers.common import (
    IGNORE_INDEX,
    divergence_kwargs,
    empty_loss,
    fp32,
    kd_scale,
    loss_chunk_rows,
    per_token_metrics,
    step_denominator,
)
from dskd_core.distillers.cross import (
    CrossDistiller,
    aligned_rows,
    resolve_vocab_map,
    setup_cross,
    shared_pairs,
)
from dskd_core.fused import Head, fused_sum
from dskd_core.fused_terms import Terms, TermsBlock
from dskd_core.projectors import PseudoInverseProjector, ideal_t2s, random_linear
from dskd_core.spec import Method

_SUMS = (
    "ce",
    "kd_student_space",
    "ce_t2s",
    "kd_teacher_space",
    "align_ratio",
    "mapped_label_ratio",
    "agreement",
    "t2s_acc",
    "s2t_acc",
)


@register(Method.dskd_eta)
class DSKDETADistiller(CrossDistiller):
    def __init__(self, ctx: DistillContext) -> None:
        super().__init__(ctx)
        self.teacher_vocab, self.vocab_size = setup_cross(ctx, Method.dskd_eta)
        vocab_map = resolve_vocab_map(ctx, self.teacher_vocab, self.vocab_size)
        self.register_buffer("vocab_map", vocab_map, persistent=False)
        w_s = models.output_head(ctx.student).weight
        w_t = models.output_head(ctx.teacher).weight
        d = self.spec.distill
        self.ideal = d.projector_init == "ideal"
        if self.ideal:
            t_ids, s_ids = shared_pairs(vocab_map)
            if d.topk_vocab is not None:
                t_ids, s_ids = t_ids[: d.topk_vocab], s_ids[: d.topk_vocab]
            if t_ids.numel() == 0:
                raise ValueError("dskd_eta with projector_init 'ideal': the vocabularies share no token")
            self.register_buffer("fit_student_ids", s_ids, persistent=False)
            self.t2s = ideal_t2s(w_t[t_ids], w_s[s_ids])
            self.s2t: torch.nn.Module = PseudoInverseProjector(w_t[t_ids])
        else:
            self.t2s = random_linear(w_t.shape[1], w_s.shape[1], w_s.device)
            self.s2t = random_linear(w_s.shape[1], w_t.shape[1], w_s.device)

    def _s2t_map(self) -> Callable[[torch.Tensor], torch.Tensor]:
        if not self.ideal:
            return self.s2t
        p = self.s2t.matrix(models.output_head(self.student).weight[self.fit_student_ids])
        return lambda h: h @ p

    def export_state(self) -> dict[str, torch.Tensor]:
        """Projector weights in Linear layout (`t2s.weight`, `s2t.weight`, biases for random init)."""
        state = super().export_state()
        if self.ideal:
            head = models.output_head(self.student).weight[self.fit_student_ids]
            state["s2t.weight"] = self.s2t.weight_from(head)
        return state

    def loss_from_hidden(
        self,
        batch: dict[str, torch.Tensor],
        h_s: torch.Tensor,
        h_t: torch.Tensor,
        tokens: TokenCounts,
        *,
        kd_rate: float | None = None,
    ) -> LossOutput:
        d = self.spec.distill
        rate = d.kd_rate if kd_rate is None else kd_rate  # split_loss asks for the KD part alone (1.0)
        rows = aligned_rows(h_s, h_t, batch["eta_teacher_index"], batch["labels"], batch["teacher_labels"])
        n = rows.n
        denominator = step_denominator(tokens, n)
        if n == 0:
            return LossOutput(empty_loss(h_s), {"loss": 0.0, "kd": 0.0, **dict.fromkeys(_SUMS, 0.0)})
        w_s = models.output_head(self.student).weight[: self.vocab_size]
        w_t = models.output_head(self.teacher).weight[: self.teacher_vocab].detach()
        t2s, s2t, vocab_map = self.t2s, self._s2t_map(), self.vocab_map
        name, params, v2 = d.divergence.value, divergence_kwargs(d), d.dskd_variant == "v2"

        with fp32(h_s.device):
            heads = [
                Head(rows.h_s, w_s),
                Head(rows.h_t, w_t),
                # Student space: the projected teacher read out by the (detached) student head.
                Head(t2s(rows.h_t.float()), w_s.detach()),
                # Teacher space: the projected student read out by the frozen teacher head.
                Head(s2t(rows.h_s.float()), w_t),
            ]

        def chunk(t: Terms, y: torch.Tensor, al: torch.Tensor) -> None:
            # heads: 0 student, 1 teacher, 2 t2s (student space), 3 s2t (teacher space); sums as in _SUMS
            teacher_top, t2s_top, s2t_top = t.argmax(1), t.argmax(2), t.argmax(3)
            mapped_top = vocab_map[teacher_top]  # −1 where the teacher's token has no student counterpart
            mapped = al & (mapped_top >= 0)
            agree = mapped & (t2s_top == mapped_top)
            t.ce(0, head=0, target=y, ignore_index=None)  # y: valid labels only
            t.divergence(1, q=0, p=2, mask=agree if v2 else al)
            ce_rows = mapped if v2 else al
            t.ce(2, head=2, target=torch.where(ce_rows, mapped_top if v2 else y, IGNORE_INDEX))
            t.divergence(3, q=3, p=1, mask=al)
            for slot, count in enumerate(
                [al, mapped, agree, al & (t2s_top == y), al & (s2t_top == teacher_top)], start=4
            ):
                t.count(slot, count)

        scale = kd_scale(d)
        # loss = ((1 − r)·CE + r·(τ-scale·(KD_stu + KD_tea) + CE_t2s)) / the step's tokens
        weights = [1.0 - rate, rate * scale, rate, rate * scale, 0.0, 0.0, 0.0, 0.0, 0.0]
        loss, sums = fused_sum(
            TermsBlock(chunk, n_sums=len(_SUMS), divergence=name, temperature=d.temperature, **params),
            heads,
            rows.labels,
            rows.aligned,
            weights=[w / denominator for w in weights],
            chunk_rows=loss_chunk_rows(
                d, self.vocab_size, self.teacher_vocab, self.vocab_size, self.teacher_vocab
            ),
        )
        metrics = per_token_metrics(_SUMS, sums, n)
        metrics["kd"] = (
            scale * (metrics["kd_student_space"] + metrics["kd_teacher_space"]) + metrics["ce_t2s"]
        )
        metrics["loss"] = (1.0 - rate) * metrics["ce"] + rate * metrics["kd"]
        return LossOutput(loss, metrics)
