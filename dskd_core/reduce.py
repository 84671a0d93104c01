"""Chunked, recomputed loss sums and the token-count reduction (design.md "Losses", methods.md §1).

Distillers gather the valid positions' hidden states (`[N, d]`) and compute logits inside a chunk function, so
no `[N, V]` tensor of the whole step exists: `chunked_sum` evaluates that function on chunks of positions under
activation checkpointing (the backward pass recomputes each chunk), and sums the chunks' outputs. Each sum is
divided once by the token count of the whole optimisation step (`safe_div`), so the per-token mean does not
depend on how the step was split into micro-batches.

`kd_loss_from_hidden` is the ready-made CE + divergence for one pair of heads on `chunked_sum`;
`fused_kd_loss_from_hidden` gives the same weighted loss without recomputation when the weights are known
before the forward pass (bench/loss_memory.py compares the three forms).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from dskd_core.fused import Head, fused_sum
from dskd_core.losses import divergence
from dskd_core.spec import DEFAULT_CHUNK_ELEMENTS, MIN_CHUNK_ROWS

IGNORE_INDEX = -100


def chunk_rows(*widths: int, budget: int = DEFAULT_CHUNK_ELEMENTS, override: int | None = None) -> int:
    """Rows per chunk: `override` when given, else `budget // Σ widths` (at least `MIN_CHUNK_ROWS`).

    `widths` are the vocabulary widths of the logits a chunk holds at once (one per head), so the chunk's logits
    have at most `budget` elements whenever the budget allows `MIN_CHUNK_ROWS` rows.
    """
    for name, value in (("budget", budget), ("override", override)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if override is not None:
        return override
    if any(isinstance(w, bool) or not isinstance(w, int) or w < 0 for w in widths) or sum(widths) < 1:
        raise ValueError(f"chunk_rows needs vocabulary widths (ints ≥ 0, not all 0), got {widths!r}")
    return max(MIN_CHUNK_ROWS, budget // sum(widths))


def chunked_sum(fn: Callable[..., Tensor], *tensors: Tensor, chunk_size: int) -> Tensor:
    """Σ over chunks of `fn(*chunk)`, each chunk `chunk_size` positions along dim 0 of every tensor.

    `fn` returns a 1-D tensor of sums (e.g. `[loss_sum, count]`); non-tensor arguments go in through a closure.
    With N = 0, `fn` runs once on the empty slices, so the result has fn's length, is zero and stays connected
    to whatever parameters fn uses (their gradients are zero, never NaN).
    """
    if not tensors:
        raise ValueError("chunked_sum needs at least one tensor to split")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    n = tensors[0].shape[0]
    for t in tensors[1:]:
        if t.shape[0] != n:
            raise ValueError(f"all tensors must share dim 0: got {[tuple(x.shape) for x in tensors]}")
    # Without autograd there is nothing to recompute; checkpointing would only add overhead.
    recompute = torch.is_grad_enabled()
    total: Tensor | None = None
    for start in range(0, max(n, 1), chunk_size):
        chunk = [t[start : start + chunk_size] for t in tensors]
        out = checkpoint(fn, *chunk, use_reentrant=False) if recompute else fn(*chunk)
        if out.dim() != 1:
            raise ValueError(f"fn must return a 1-D tensor of sums, got shape {tuple(out.shape)}")
        total = out if total is None else total + out
    assert total is not None
    return total


def valid_mask(labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """True at positions whose label is a real token (the loss is computed there)."""
    return labels != ignore_index


def safe_div(total: Tensor, count: Tensor | float) -> Tensor:
    """total / count, and a grad-connected 0 when count is 0 (a step with no valid tokens)."""
    if isinstance(count, Tensor):
        count = count.to(total.dtype)
        positive = count > 0
        return torch.where(
            positive, total / torch.where(positive, count, torch.ones_like(count)), total * 0.0
        )
    return total / count if count > 0 else total * 0.0


def gather_valid(hidden: Tensor, mask: Tensor) -> Tensor:
    """The rows of `hidden [B, T, d]` where `mask [B, T]` is true, as `[N, d]` (row-major order)."""
    if hidden.shape[:-1] != mask.shape:
        raise ValueError(f"mask {tuple(mask.shape)} does not match hidden {tuple(hidden.shape)}")
    return hidden[mask.bool()]


def head_logits(hidden: Tensor, head_weight: Tensor, vocab_limit: int | None = None) -> Tensor:
    """fp32 logits `hidden @ W[:vocab_limit].T` (columns past the real vocabulary are padding)."""
    weight = head_weight if vocab_limit is None else head_weight[:vocab_limit]
    dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    return hidden.to(dtype) @ weight.to(dtype).T


def kd_loss_from_hidden(
    student_hidden: Tensor,
    student_head: Tensor,
    labels: Tensor,
    teacher_hidden: Tensor | None = None,
    teacher_head: Tensor | None = None,
    *,
    divergence_name: str = "fkl",
    temperature: float = 1.0,
    vocab_limit: int | None = None,
    chunk_size: int = 1024,
    ignore_index: int = IGNORE_INDEX,
    **divergence_params: float,
) -> Tensor:
    """`[ce_sum, kd_sum, n_valid]` over the valid positions, for the common same-vocabulary case.

    `student_hidden [..., d_s]` and `labels [...]` (already shifted, design.md) select the valid positions;
    `teacher_hidden [..., d_t]` is aligned with them (or None: SFT, kd_sum = 0). Heads are the `[V, d]` LM head
    weights, both cut to the first `vocab_limit` columns. Logits exist only one chunk at a time, in fp32. The
    caller divides each sum by the step's token count (`safe_div`) and applies kd_rate and any τ² factor.
    """
    mask = valid_mask(labels, ignore_index)
    h_s = student_hidden[mask]
    targets = labels[mask]
    with_teacher = teacher_hidden is not None
    if with_teacher and teacher_head is None:
        raise ValueError("teacher_hidden given without teacher_head")
    h_t = teacher_hidden[mask] if with_teacher else h_s[:, :0]
    if vocab_limit is not None and targets.numel() and int(targets.max()) >= vocab_limit:
        raise ValueError(f"a label is >= vocab_limit={vocab_limit}")

    def chunk_sums(h_s_chunk: Tensor, h_t_chunk: Tensor, y_chunk: Tensor) -> Tensor:
        student_logits = head_logits(h_s_chunk, student_head, vocab_limit)
        ce = F.cross_entropy(student_logits, y_chunk, reduction="sum")
        if not with_teacher:
            return torch.stack([ce, ce * 0.0])
        teacher_logits = head_logits(h_t_chunk, teacher_head, vocab_limit)
        kd = divergence(
            divergence_name, student_logits, teacher_logits, temperature=temperature, **divergence_params
        ).sum()
        return torch.stack([ce, kd])

    sums = chunked_sum(chunk_sums, h_s, h_t, targets, chunk_size=chunk_size)
    count = torch.tensor([float(targets.numel())], dtype=sums.dtype, device=sums.device)
    return torch.cat([sums, count])


def fused_kd_loss_from_hidden(
    student_hidden: Tensor,
    student_head: Tensor,
    labels: Tensor,
    teacher_hidden: Tensor | None = None,
    teacher_head: Tensor | None = None,
    *,
    ce_weight: float,
    kd_weight: float,
    divergence_name: str = "fkl",
    temperature: float = 1.0,
    vocab_limit: int | None = None,
    chunk_size: int = 1024,
    ignore_index: int = IGNORE_INDEX,
    **divergence_params: float,
) -> Tensor:
    """Scalar `ce_weight·CE_sum + kd_weight·KD_sum`, the same value as weighting `kd_loss_from_hidden`'s sums.

    For when the weights are known before the forward pass (they are: kd_rate and the step's token counts), this
    avoids the checkpointed form's recomputation. Gradients reach `student_hidden` and `student_head` only; the
    teacher side is treated as a constant.
    """
    if teacher_hidden is not None and teacher_head is None:
        raise ValueError("teacher_hidden given without teacher_head")
    mask = valid_mask(labels, ignore_index)
    targets = labels[mask]
    if vocab_limit is not None and targets.numel() and int(targets.max()) >= vocab_limit:
        raise ValueError(f"a label is >= vocab_limit={vocab_limit}")
    limit = student_head.shape[0] if vocab_limit is None else vocab_limit
    heads = [Head(student_hidden[mask], student_head[:limit])]
    with_teacher = teacher_hidden is not None and kd_weight != 0.0
    if with_teacher:
        heads.append(Head(teacher_hidden[mask].detach(), teacher_head[:limit].detach()))

    def sums(z_s: Tensor, *rest: Tensor) -> Tensor:
        *z_t, y = rest
        ce = F.cross_entropy(z_s, y, reduction="sum")
        if not z_t:
            return torch.stack([ce, ce * 0.0])
        kd = divergence(divergence_name, z_s, z_t[0], temperature=temperature, **divergence_params)
        return torch.stack([ce, kd.sum()])

    loss, _ = fused_sum(sums, heads, targets, weights=[ce_weight, kd_weight], chunk_rows=chunk_size)
    return loss
