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

from dskd_core.losses import divergence

IGNORE_INDEX = -100


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


class _FusedHeadLoss(torch.autograd.Function):
    """Weighted CE + KD from hidden states whose gradient is formed chunk by chunk during the forward pass.

    Each chunk's logits get their gradient from a local autograd pass, which is folded at once into the gradients
    of the hidden states and the head (two matmuls); the backward pass only scales them. No chunk is recomputed,
    so this does the naive form's four matmuls with the chunked form's memory.
    """

    @staticmethod
    def forward(ctx, h_s, w_s, h_t, w_t, targets, cfg):  # type: ignore[override]
        limit = w_s.shape[0] if cfg["vocab_limit"] is None else cfg["vocab_limit"]
        grad_h = torch.zeros_like(h_s) if cfg["need_grad"] and h_s.requires_grad else None
        grad_w = torch.zeros_like(w_s) if cfg["need_grad"] and w_s.requires_grad else None
        total = h_s.new_zeros((), dtype=torch.float64 if h_s.dtype == torch.float64 else torch.float32)
        for start in range(0, h_s.shape[0], cfg["chunk_size"]):
            rows = slice(start, start + cfg["chunk_size"])
            h_chunk = h_s[rows]
            with torch.enable_grad():
                logits = head_logits(h_chunk.detach(), w_s.detach(), limit).requires_grad_()
                loss = cfg["ce_weight"] * F.cross_entropy(logits, targets[rows], reduction="sum")
                if h_t is not None and cfg["kd_weight"] != 0.0:
                    teacher_logits = head_logits(h_t[rows], w_t, limit)
                    kd = divergence(
                        cfg["name"], logits, teacher_logits, temperature=cfg["temperature"], **cfg["params"]
                    )
                    loss = loss + cfg["kd_weight"] * kd.sum()
            total += loss.detach()
            if grad_h is None and grad_w is None:
                continue
            (g_logits,) = torch.autograd.grad(loss, logits)
            if grad_h is not None:
                grad_h[rows] = (g_logits @ w_s[:limit].to(g_logits.dtype)).to(grad_h.dtype)
            if grad_w is not None:
                grad_w[:limit] += (g_logits.T @ h_chunk.to(g_logits.dtype)).to(grad_w.dtype)
        ctx.save_for_backward(grad_h, grad_w)
        return total

    @staticmethod
    def backward(ctx, grad_total):  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        return (
            None if grad_h is None else grad_h * grad_total.to(grad_h.dtype),
            None if grad_w is None else grad_w * grad_total.to(grad_w.dtype),
            None,
            None,
            None,
            None,
        )


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
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if teacher_hidden is not None and teacher_head is None:
        raise ValueError("teacher_hidden given without teacher_head")
    mask = valid_mask(labels, ignore_index)
    targets = labels[mask]
    if vocab_limit is not None and targets.numel() and int(targets.max()) >= vocab_limit:
        raise ValueError(f"a label is >= vocab_limit={vocab_limit}")
    h_t = None if teacher_hidden is None else teacher_hidden[mask].detach()
    w_t = None if teacher_head is None else teacher_head.detach()
    cfg = {
        "ce_weight": float(ce_weight),
        "kd_weight": float(kd_weight),
        "name": divergence_name,
        "temperature": temperature,
        "vocab_limit": vocab_limit,
        "chunk_size": chunk_size,
        "params": divergence_params,
        # Forward runs with autograd off, so whether gradients are wanted is decided here.
        "need_grad": torch.is_grad_enabled(),
    }
    return _FusedHeadLoss.apply(student_hidden[mask], student_head, h_t, w_t, targets, cfg)
