"""Helpers shared by the cross-vocabulary distillers (methods.md §3): pair checks, the vocabulary map, the
shared columns, hidden states of both tokenisations, and the gathering of aligned position pairs.

Position pairing: every method here except CMA pairs each student response position with at most one teacher
response position through an index `[B, T_s]` (teacher position or −1): `eta_teacher_index` and
`mined_teacher_index` come precomputed with the batch (the data pipeline aligns, never the training step), and
ULD's in-order pairing is derived from the two label rows (`in_order_index`). `aligned_rows` turns such an index
into flat rows over the student's valid positions, with the teacher's hidden state at the paired position (zeros
where there is none) and a mask, so one chunked pass computes both the CE on every position and the KD terms on
the aligned ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dskd_core import models
from dskd_core.distillers.base import DistillContext, Distiller, LossOutput, TokenCounts
from dskd_core.distillers.common import IGNORE_INDEX, freeze_teacher, real_vocab_size
from dskd_core.spec import Method


class CrossDistiller(Distiller):
    """A distiller over two tokenisations: `forward` runs both models and hands their last hidden states to
    the method's `loss_from_hidden` (which tests also call directly with hidden states of their own)."""

    def forward(
        self, batch: dict[str, torch.Tensor], tokens: TokenCounts, **options: float | None
    ) -> LossOutput:
        h_s, h_t = encode_sides(self.student, self.teacher, batch)
        return self.loss_from_hidden(batch, h_s, h_t, tokens, **options)

    def loss_from_hidden(
        self,
        batch: dict[str, torch.Tensor],
        h_s: torch.Tensor,
        h_t: torch.Tensor,
        tokens: TokenCounts,
        **options,
    ) -> LossOutput:  # pragma: no cover - every method defines it
        raise NotImplementedError

    def register_shared_columns(self, ctx: DistillContext) -> None:
        """Buffers `shared_teacher_ids` / `shared_student_ids`: the vocabulary pairs both sides have."""
        t_ids, s_ids = shared_pairs(resolve_vocab_map(ctx, self.teacher_vocab, self.vocab_size))
        self.register_buffer("shared_teacher_ids", t_ids, persistent=False)
        self.register_buffer("shared_student_ids", s_ids, persistent=False)


def setup_cross(ctx: DistillContext, method: Method) -> tuple[int, int]:
    """Checks a teacher is there, freezes it; returns the real vocabulary sizes (teacher, student)."""
    if ctx.teacher is None or ctx.teacher_tokenizer is None:
        raise ValueError(f"method '{method.value}' needs a teacher model and its tokenizer")
    freeze_teacher(ctx.teacher)
    v_t = real_vocab_size(ctx.teacher_tokenizer, models.output_head(ctx.teacher).weight)
    v_s = real_vocab_size(ctx.student_tokenizer, models.output_head(ctx.student).weight)
    return v_t, v_s


def resolve_vocab_map(ctx: DistillContext, v_t: int, v_s: int) -> torch.Tensor:
    """teacher id → student id (−1 = no match) over the teacher's real vocabulary, on the student's device.

    Uses `ctx.vocab_map` when the caller built it, else builds it from the two tokenizers. Ids the map sends
    past the student's real vocabulary are treated as unmapped (they could never be a student label).
    """
    vocab_map = ctx.vocab_map
    if vocab_map is None:
        from dskd_core.alignment import build_vocab_map

        vocab_map = build_vocab_map(ctx.teacher_tokenizer, ctx.student_tokenizer)
    vocab_map = vocab_map.detach().long().cpu()
    out = torch.full((v_t,), -1, dtype=torch.long)
    n = min(v_t, vocab_map.numel())
    out[:n] = vocab_map[:n]
    out[out >= v_s] = -1
    device = models.output_head(ctx.student).weight.device
    return out.to(device)


def shared_pairs(vocab_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(teacher ids, student ids) of the shared vocabulary, one pair per student id, in student-id order.

    Several teacher ids reach the same student id only when their canonical bytes coincide (e.g. an added token
    duplicating a piece); the lowest teacher id is kept, so the choice is deterministic and never depends on the
    logits.
    """
    t_ids = torch.nonzero(vocab_map >= 0).squeeze(-1)
    s_ids = vocab_map[t_ids]
    # Stable sort by student id keeps teacher ids ascending within a group: the group's first is the lowest.
    order = torch.sort(s_ids, stable=True).indices
    t_ids, s_ids = t_ids[order], s_ids[order]
    first = torch.ones_like(s_ids, dtype=torch.bool)
    first[1:] = s_ids[1:] != s_ids[:-1]
    return t_ids[first], s_ids[first]


def encode_sides(
    student: nn.Module, teacher: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Last hidden states of the student `[B, T_s, d_s]` (with a graph) and of the teacher `[B, T_t, d_t]`
    (on the teacher's own tokenisation, without a graph; from the teacher cache when the batch carries it)."""
    h_s = models.last_hidden_state(student, batch["input_ids"], batch["attention_mask"])
    if "teacher_hidden" in batch:
        return h_s, batch["teacher_hidden"]
    if teacher.training:
        teacher.eval()
    with torch.no_grad():
        h_t = models.last_hidden_state(teacher, batch["teacher_input_ids"], batch["teacher_attention_mask"])
    return h_s, h_t


def in_order_index(student_labels: torch.Tensor, teacher_labels: torch.Tensor) -> torch.Tensor:
    """`[B, T_s]`: the k-th student response position ↔ the k-th teacher response position, up to the shorter."""
    s_valid, t_valid = student_labels != IGNORE_INDEX, teacher_labels != IGNORE_INDEX
    t_rank = t_valid.long().cumsum(-1) - 1
    b, t_len = teacher_labels.shape
    # position_of[b, k] = the position of row b's k-th teacher response token (one spare column for invalids)
    position_of = torch.full((b, t_len + 1), -1, dtype=torch.long, device=teacher_labels.device)
    positions = torch.arange(t_len, device=teacher_labels.device).expand(b, t_len)
    position_of.scatter_(1, torch.where(t_valid, t_rank, t_len), positions)
    s_rank = s_valid.long().cumsum(-1) - 1
    paired = s_valid & (s_rank < t_valid.sum(-1, keepdim=True))
    index = torch.gather(position_of, 1, torch.where(paired, s_rank, t_len))
    return torch.where(paired, index, -1)


@dataclass
class AlignedRows:
    """The student's valid positions as flat rows, each with its paired teacher state (zeros if unpaired)."""

    h_s: torch.Tensor  # [N, d_s], with the student's graph
    labels: torch.Tensor  # [N] gold student labels
    h_t: torch.Tensor  # [N, d_t], teacher state at the paired position, no graph
    aligned: torch.Tensor  # [N] bool

    @property
    def n(self) -> int:
        return self.labels.numel()

    @property
    def n_aligned(self) -> int:
        return int(self.aligned.sum())


def aligned_rows(
    h_s: torch.Tensor,
    h_t: torch.Tensor,
    index: torch.Tensor,
    student_labels: torch.Tensor,
    teacher_labels: torch.Tensor,
) -> AlignedRows:
    """Gathers the pairs of `index [B, T_s]`; a pair counts only when both of its positions are response labels."""
    if index.shape != student_labels.shape:
        raise ValueError(
            f"alignment index {tuple(index.shape)} does not match labels {tuple(student_labels.shape)}"
        )
    t_len = teacher_labels.shape[1]
    if index.numel() and int(index.max()) >= t_len:
        raise ValueError(f"alignment index points past the teacher sequence (length {t_len})")
    s_valid = student_labels != IGNORE_INDEX
    safe = index.clamp(min=0)
    paired = s_valid & (index >= 0) & (torch.gather(teacher_labels, 1, safe) != IGNORE_INDEX)
    h_t_at = torch.gather(h_t, 1, safe.unsqueeze(-1).expand(-1, -1, h_t.shape[-1]))
    h_t_at = torch.where(paired.unsqueeze(-1), h_t_at, torch.zeros((), dtype=h_t.dtype, device=h_t.device))
    return AlignedRows(h_s[s_valid], student_labels[s_valid], h_t_at[s_valid], paired[s_valid])


def teacher_denominator(tokens: TokenCounts, m_local: int) -> float:
    """The step's teacher-side label count (the divisor of teacher-space terms)."""
    if m_local > tokens.teacher:
        raise ValueError(
            f"TokenCounts.teacher ({tokens.teacher}) is smaller than this micro-batch's teacher label tokens "
            f"({m_local}); it must count the whole optimisation step"
        )
    return max(float(tokens.teacher), 1.0)


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ values over mask, by `where` (not multiplication): a non-finite value outside the mask cannot leak."""
    return torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()


_ALIGNMENTS: dict[Method, tuple[str, ...]] = {
    Method.dskd_eta: ("eta",),
    Method.shared_vocab_kd: ("eta",),
    Method.mined: ("mined",),
}


def alignments_for(method: Method | str) -> tuple[str, ...]:
    """The precomputed alignment indices a cross-vocabulary method reads (CMA and ULD need none)."""
    return _ALIGNMENTS.get(Method(method), ())
