"""DSKD with Cross-Model Attention (methods.md §3.2, DSKD v1 across vocabularies).

Only response positions take part, on both sides. Student rows j (valid labels) and teacher rows i (valid
teacher labels) are flattened over the batch; a row attends only to rows of its own example.
- query  Q_j = P_query([E_s(x_j); E_s(y_j)])                   (2·d_s → 2·d_t, embeddings detached)
- key    K_i = [E_t(x_i); E_t(y_i)] / std(K)                    (one scalar std over the teacher rows)
- values V_t,i = P_t2s(h_t,i / std(h_t) + E_t(y_i) / std(E_t(y)))   (→ d_s);   V_s,j = P_s2t(h_s,j)   (→ d_t)
- scores A = Q·K^T / sqrt(2·d_t), fp32.
Student space: α = softmax_i(A_j·); z_t2s = (α·V_t)·W_s^T (student head detached); L_ce_t2s = CE(z_t2s, gold);
L_kd_stu = D(student logits ‖ stop_grad(z_t2s)) where argmax z_t2s = gold. Teacher space: α' = softmax_j(A_·i);
z_s2t = (α'·V_s)·W_t^T; L_kd_tea = D(z_s2t ‖ teacher logits / teacher_temperature) (τ applies on top).
loss = (1 − r)·CE + r·(L_kd_stu + L_ce_t2s + L_kd_tea); student-side sums ÷ the step's student token count,
L_kd_tea ÷ the step's teacher token count.

Memory: no `[B, n, m]` tensor exists. Scores are formed `cma_block_size` rows at a time (student rows for the
student space, teacher rows for the teacher space) against the flat rows of the other side, masked to the same
example, inside `chunked_sum` (each block is recomputed in backward). A block is `[block, rows of the other side]`.

Choices: the stds are taken over response rows only, so prompt and padding cannot change the loss; they make the
loss depend slightly on the micro-batch (as in v1). CMA is v1: its projectors are random Linear layers with bias
whatever `projector_init` says (its values are not plain hidden states, so the ideal maps do not apply).
Metrics: `attention_entropy` (nats, mean over student rows), `align_ratio` (student rows with at least one
teacher row to attend to), `t2s_acc`, `s2t_acc` (argmax z_s2t = teacher gold, per teacher token).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dskd_core import models
from dskd_core.distillers.base import DistillContext, LossOutput, TokenCounts, register
from dskd_core.distillers.common import (
    IGNORE_INDEX,
    divergence_kwargs,
    empty_loss,
    fp32,
    fp32_logits,
    kd_scale,
    loss_chunk_rows,
    step_denominator,
)
from dskd_core.distillers.cross import CrossDistiller, masked_sum, setup_cross, teacher_denominator
from dskd_core.losses import divergence
from dskd_core.reduce import chunked_sum
from dskd_core.spec import Method


@dataclass
class CMARows:
    """Flat response rows of both sides of a batch, ready for the attention."""

    q: torch.Tensor  # [N, 2·d_t]
    h_s: torch.Tensor  # [N, d_s]
    y_s: torch.Tensor  # [N]
    b_s: torch.Tensor  # [N] example index
    v_s: torch.Tensor  # [N, d_t]
    k: torch.Tensor  # [M, 2·d_t]
    h_t: torch.Tensor  # [M, d_t]
    y_t: torch.Tensor  # [M]
    b_t: torch.Tensor  # [M]
    v_t: torch.Tensor  # [M, d_s]


@dataclass
class CMAConfig:
    block: int
    divergence: str
    params: dict[str, float]
    temperature: float
    teacher_temperature: float


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim restricted to `mask`; a row with nothing to attend to is all zeros (no NaN)."""
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=-1) * mask


def cma_sums(rows: CMARows, w_s: torch.Tensor, w_t: torch.Tensor, cfg: CMAConfig) -> torch.Tensor:
    """`[ce, kd_stu, ce_t2s, entropy, attended, t2s_correct | kd_tea, s2t_correct, attended_t]` sums."""
    scale = 1.0 / math.sqrt(rows.k.shape[-1])

    def student_space(q: torch.Tensor, hs: torch.Tensor, y: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        with fp32(hs.device):
            mask = b[:, None] == rows.b_t[None, :]
            alpha = masked_softmax((q.float() @ rows.k.float().T) * scale, mask)
            z_t2s = fp32_logits(alpha @ rows.v_t.float(), w_s.detach())
            student_logits = fp32_logits(hs, w_s)
            ce = F.cross_entropy(student_logits, y, reduction="sum")
            attended = mask.any(-1)
            ce_t2s = F.cross_entropy(z_t2s, torch.where(attended, y, IGNORE_INDEX), reduction="sum")
            correct = attended & (z_t2s.detach().argmax(-1) == y)
            kd = divergence(
                cfg.divergence, student_logits, z_t2s.detach(), temperature=cfg.temperature, **cfg.params
            )
            entropy = -torch.special.xlogy(alpha.detach(), alpha.detach()).sum(-1)
            return torch.stack(
                [
                    ce,
                    masked_sum(kd, correct),
                    ce_t2s,
                    entropy.sum(),
                    attended.sum().float(),
                    correct.sum().float(),
                ]
            )

    def teacher_space(k: torch.Tensor, ht: torch.Tensor, y: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        with fp32(ht.device):
            mask = b[:, None] == rows.b_s[None, :]
            alpha = masked_softmax((k.float() @ rows.q.float().T) * scale, mask)
            z_s2t = fp32_logits(alpha @ rows.v_s.float(), w_t)
            teacher_logits = fp32_logits(ht, w_t) / cfg.teacher_temperature
            kd = divergence(cfg.divergence, z_s2t, teacher_logits, temperature=cfg.temperature, **cfg.params)
            attended = mask.any(-1)
            correct = attended & (z_s2t.detach().argmax(-1) == y)
            return torch.stack([masked_sum(kd, attended), correct.sum().float(), attended.sum().float()])

    student = chunked_sum(student_space, rows.q, rows.h_s, rows.y_s, rows.b_s, chunk_size=cfg.block)
    teacher = chunked_sum(teacher_space, rows.k, rows.h_t, rows.y_t, rows.b_t, chunk_size=cfg.block)
    return torch.cat([student, teacher])


def _scalar_std(x: torch.Tensor) -> torch.Tensor:
    # One rows' worth of values gives an undefined std: fall back to 1 rather than divide by NaN.
    return x.float().std() if x.numel() > 1 else x.new_ones((), dtype=torch.float32)


@register(Method.dskd_cma)
class DSKDCMADistiller(CrossDistiller):
    def __init__(self, ctx: DistillContext) -> None:
        super().__init__(ctx)
        self.teacher_vocab, self.vocab_size = setup_cross(ctx, Method.dskd_cma)
        d_s = models.output_head(ctx.student).weight.shape[1]
        d_t = models.output_head(ctx.teacher).weight.shape[1]
        device = models.output_head(ctx.student).weight.device
        self.query = nn.Linear(
            2 * models.input_embeddings(ctx.student).weight.shape[1], 2 * d_t, device=device
        )
        self.t2s = nn.Linear(d_t, d_s, device=device)
        self.s2t = nn.Linear(d_s, d_t, device=device)

    def rows(self, batch: dict[str, torch.Tensor], h_s: torch.Tensor, h_t: torch.Tensor) -> CMARows:
        """Queries, keys and values of the response rows of both sides."""
        s_valid = batch["labels"] != IGNORE_INDEX
        t_valid = batch["teacher_labels"] != IGNORE_INDEX
        b_s = torch.nonzero(s_valid)[:, 0]
        b_t = torch.nonzero(t_valid)[:, 0]
        e_s, e_t = models.input_embeddings(self.student), models.input_embeddings(self.teacher)
        y_s, y_t = batch["labels"][s_valid], batch["teacher_labels"][t_valid]
        with torch.no_grad():
            q_in = torch.cat([e_s(batch["input_ids"][s_valid]), e_s(y_s)], dim=-1).float()
            key = torch.cat([e_t(batch["teacher_input_ids"][t_valid]), e_t(y_t)], dim=-1).float()
            target_emb = e_t(y_t).float()
            ht = h_t[t_valid].float()
            key = key / _scalar_std(key)
            value_in = ht / _scalar_std(ht) + target_emb / _scalar_std(target_emb)
        with fp32(h_s.device):
            hs = h_s[s_valid]
            return CMARows(
                q=self.query(q_in),
                h_s=hs,
                y_s=y_s,
                b_s=b_s,
                v_s=self.s2t(hs.float()),
                k=key,
                h_t=ht,
                y_t=y_t,
                b_t=b_t,
                v_t=self.t2s(value_in),
            )

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
        rows = self.rows(batch, h_s, h_t)
        n, m = rows.y_s.numel(), rows.y_t.numel()
        denominator, teacher_denom = step_denominator(tokens, n), teacher_denominator(tokens, m)
        names = ("ce", "kd_student_space", "ce_t2s", "kd_teacher_space", "attention_entropy", "align_ratio")
        if n == 0:
            zeros = dict.fromkeys((*names, "t2s_acc", "s2t_acc"), 0.0)
            return LossOutput(
                empty_loss(h_s) + 0.0 * sum(p.sum() for p in self.parameters()),
                zeros | {"loss": 0.0, "kd": 0.0},
            )
        w_s = models.output_head(self.student).weight[: self.vocab_size]
        w_t = models.output_head(self.teacher).weight[: self.teacher_vocab].detach()
        # A block holds two logits tensors of one side's vocabulary: the loss budget caps the block too.
        widest = max(self.vocab_size, self.teacher_vocab)
        block = min(d.cma_block_size, loss_chunk_rows(d, widest, widest))
        cfg = CMAConfig(block, d.divergence.value, divergence_kwargs(d), d.temperature, d.teacher_temperature)
        sums = cma_sums(rows, w_s, w_t, cfg)
        ce, kd_stu, ce_t2s, kd_tea = sums[0], sums[1], sums[2], sums[6]
        scale = kd_scale(d)
        kd = scale * kd_stu / denominator + ce_t2s / denominator + scale * kd_tea / teacher_denom
        loss = (1.0 - rate) * ce / denominator + rate * kd
        ce_, kd_stu_, ce_t2s_, entropy_, attended_, t2s_ok_, kd_tea_, s2t_ok_, _ = (
            sums.detach().double().tolist()
        )
        per_s, per_t = 1.0 / max(n, 1), 1.0 / max(m, 1)
        metrics = {
            "ce": ce_ * per_s,
            "kd_student_space": kd_stu_ * per_s,
            "ce_t2s": ce_t2s_ * per_s,
            "kd_teacher_space": kd_tea_ * per_t,
            "attention_entropy": entropy_ / max(attended_, 1.0),
            "align_ratio": attended_ * per_s,
            "t2s_acc": t2s_ok_ * per_s,
            "s2t_acc": s2t_ok_ * per_t,
        }
        metrics["kd"] = (
            scale * (metrics["kd_student_space"] + metrics["kd_teacher_space"]) + metrics["ce_t2s"]
        )
        metrics["loss"] = (1.0 - rate) * metrics["ce"] + rate * metrics["kd"]
        return LossOutput(loss, metrics)


def cma_peak_memory_pair(n: int, m: int, *, d_s: int = 64, d_t: int = 96, vocab: int = 512, block: int = 64):
    """Two zero-argument callables (forward + backward of `cma_sums` on random rows of one example with n student
    and m teacher positions), blockwise and unblocked, for the memory bench (bench/alignment.py)."""
    g = torch.Generator().manual_seed(0)

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).requires_grad_()

    q, v_s, v_t, h_s = leaf(n, 2 * d_t), leaf(n, d_t), leaf(m, d_s), leaf(n, d_s)
    k, h_t = torch.randn(m, 2 * d_t, generator=g), torch.randn(m, d_t, generator=g)
    w_s, w_t = leaf(vocab, d_s), torch.randn(vocab, d_t, generator=g)
    y_s, y_t = torch.randint(0, vocab, (n,), generator=g), torch.randint(0, vocab, (m,), generator=g)
    rows = CMARows(
        q, h_s, y_s, torch.zeros(n, dtype=torch.long), v_s, k, h_t, y_t, torch.zeros(m, dtype=torch.long), v_t
    )

    def run(block_size: int) -> Callable[[], torch.Tensor]:
        def step() -> torch.Tensor:
            cfg = CMAConfig(block_size, "fkl", {}, 2.0, 1.0)
            total = cma_sums(rows, w_s, w_t, cfg)[[0, 1, 2, 6]].sum()
            total.backward()
            return total.detach()

        return step

    return run(block), run(max(n, m))
