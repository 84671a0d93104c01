"""Fused head losses: logits a chunk of rows at a time, their gradient folded in during the forward pass.

A loss over LM heads (design.md "Losses") reads logits `z_i = x_i · W_i^T` (`x_i [N, d_i]` hidden states or
projections of them, `W_i [V_i, d_i]` a head) and returns sums over positions. `fused_sum` never holds a
`[N, V]` tensor and never recomputes one:

- rows are taken `chunk_rows` at a time; each head's chunk logits are written by one matmul into a buffer that
  is reused for every chunk (a fresh multi-hundred-MB tensor per chunk costs page faults, on CPU as much time as
  the arithmetic on it);
- the loss function runs on `block_rows`-row slices of those buffers under a local autograd pass (or any
  `BlockLoss` that writes its own gradient), so its intermediates (softmaxes, log-probabilities, products,
  autograd's saved tensors) exist for a few rows only; the gradient w.r.t. the logits is written back into the
  buffer in place;
- the buffer (now ∂loss/∂z_i) is folded at once into ∂/∂x_i (`G · W_i`) and ∂/∂W_i (`+= G^T · x_i`).

The loss weights must be known before the forward pass (they are: kd_rate, τ² and the step's token counts):
the function returns `loss = Σ_k weights_k · sums_k`, whose gradient is the folded one, and the `sums`
themselves without a gradient (metrics). Memory: the chunk's logits (the budget, `reduce.chunk_rows`), a few
block-sized intermediates, and ∂/∂x_i, ∂/∂W_i (which any form of the loss produces).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

# Elements of all heads' logits in one block of rows: the loss function's intermediates scale with this. On CPU
# a small block stays in the core's cache across the loss's passes over it: at V = 152k (one row of DSKD's four
# heads, three of vanilla KD's two) the loss took 12-16% less CPU time than with 2**22-element blocks
# (bench/loss_memory.py); at small vocabularies each pass's fixed cost matters more, so the block is a budget,
# not one row. On an accelerator each pass is a kernel launch: blocks there are larger.
BLOCK_ELEMENTS = 2**20
ACCELERATOR_BLOCK_ELEMENTS = 2**22


@dataclass(frozen=True)
class Head:
    """Logits `hidden @ weight.T`: `hidden [N, d]` (a gradient flows to it if it requires one), `weight [V, d]`
    (already cut to the real vocabulary; a gradient flows to it if it requires one)."""

    hidden: Tensor
    weight: Tensor


class BlockLoss:
    """Sums of a loss over a block of rows: `sums = block(logits, extras, wants, weights)`.

    `logits[i]` is head i's fp32 `[b, V_i]` block (a view of the chunk buffer); for every i with `wants[i]` the
    call replaces it in place by ∂(weights · sums)/∂logits[i]. `extras` are the blocks of the other per-row
    tensors. Subclass: `AutogradBlock` (any function, differentiated by autograd); a hand-written gradient is
    another subclass.
    """

    def __call__(
        self, logits: list[Tensor], extras: list[Tensor], wants: list[bool], weights: Tensor
    ) -> Tensor:
        raise NotImplementedError


def _checked(sums: Tensor, weights: Tensor) -> Tensor:
    if sums.shape != weights.shape:
        raise ValueError(
            f"the loss must return a 1-D tensor of {weights.numel()} sums (one per weight), got shape "
            f"{tuple(sums.shape)}"
        )
    return sums


class AutogradBlock(BlockLoss):
    """A `BlockLoss` from `fn(*logits, *extras) -> sums [k]`, differentiated by autograd one block at a time."""

    def __init__(self, fn: Callable[..., Tensor]) -> None:
        self.fn = fn

    def __call__(
        self, logits: list[Tensor], extras: list[Tensor], wants: list[bool], weights: Tensor
    ) -> Tensor:
        if not any(wants):
            with torch.no_grad():
                return _checked(self.fn(*logits, *extras), weights).detach()
        with torch.enable_grad():
            leaves = [z.detach().requires_grad_(w) for z, w in zip(logits, wants, strict=True)]
            sums = _checked(self.fn(*leaves, *extras), weights)
            wanted = [leaf for leaf in leaves if leaf.requires_grad]
            loss = (sums * weights.to(sums.dtype)).sum()
            grads = (
                torch.autograd.grad(loss, wanted, allow_unused=True)
                if loss.requires_grad
                else [None] * len(wanted)
            )
        for z, g in zip([z for z, w in zip(logits, wants, strict=True) if w], grads, strict=True):
            z.zero_() if g is None else z.copy_(g)
        return sums.detach()


class _Buffers:
    """One reusable fp32 `[rows, V]` buffer per group of heads for the chunk logits."""

    def __init__(self, rows: Sequence[int], widths: Sequence[int], device: torch.device) -> None:
        self.rows, self.widths, self.device = list(rows), list(widths), device
        self._bufs: list[Tensor | None] = [None] * len(widths)

    def get(self, i: int, rows: int) -> Tensor:
        buf = self._bufs[i]
        if buf is None:
            buf = torch.empty(self.rows[i], self.widths[i], dtype=torch.float32, device=self.device)
            self._bufs[i] = buf
        return buf[:rows]


@dataclass
class _Plan:
    block: BlockLoss
    weights: Tensor
    n_heads: int
    chunk_rows: int
    block_rows: int
    need_grad: bool


def _same_weight(a: Tensor, b: Tensor) -> bool:
    """The same `[V, d]` tensor (or views of one with the same layout), e.g. a head and its `.detach()`."""
    return (
        a.device == b.device
        and a.dtype == b.dtype
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.data_ptr() == b.data_ptr()
    )


def _groups(ws: Sequence[Tensor]) -> list[list[int]]:
    """Heads grouped by shared weight: one matmul computes a group's logits for a chunk (rows stacked), so a
    weight is read once per chunk however many heads use it (DSKD: student and projected teacher on W_s)."""
    groups: list[list[int]] = []
    for i, w in enumerate(ws):
        for g in groups:
            if _same_weight(ws[g[0]], w):
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


def _run(plan: _Plan, xs: Sequence[Tensor], ws: Sequence[Tensor], extras: Sequence[Tensor]):
    n = xs[0].shape[0]
    device = xs[0].device
    grad_x_on = [plan.need_grad and x.requires_grad for x in xs]
    grad_w_on = [plan.need_grad and w.requires_grad for w in ws]
    wants = [gx or gw for gx, gw in zip(grad_x_on, grad_w_on, strict=True)]
    groups = _groups(ws)
    # fp32 heads once per call and per distinct weight (a no-op for fp32 weights), not once per chunk.
    group_w = [ws[g[0]].detach().float() for g in groups]
    grad_x = [
        torch.empty(n, x.shape[1], device=device) if on else None for x, on in zip(xs, grad_x_on, strict=True)
    ]
    group_of = {i: k for k, g in enumerate(groups) for i in g}
    grad_w = [torch.zeros_like(group_w[group_of[i]]) if on else None for i, on in enumerate(grad_w_on)]
    chunk = min(plan.chunk_rows, max(n, 1))
    buffers = _Buffers([chunk * len(g) for g in groups], [w.shape[0] for w in group_w], device)
    weights = plan.weights.to(device)
    total: Tensor | None = None
    # With N = 0 the block runs once on empty rows, so the sums have their length and are zero.
    for start in range(0, max(n, 1), plan.chunk_rows):
        rows = slice(start, min(start + plan.chunk_rows, n))
        r = rows.stop - rows.start
        hidden = [x.detach()[rows].float() for x in xs]
        logits: list[Tensor | None] = [None] * len(xs)
        stacked = []
        for k, g in enumerate(groups):
            x = hidden[g[0]] if len(g) == 1 else torch.cat([hidden[i] for i in g])
            buf = torch.mm(x, group_w[k].T, out=buffers.get(k, r * len(g)))
            stacked.append((x, buf))
            for j, i in enumerate(g):
                logits[i] = buf[j * r : (j + 1) * r]
        chunk_extras = [e[rows] for e in extras]
        for b in range(0, max(r, 1), plan.block_rows):
            sub = slice(b, min(b + plan.block_rows, r))
            sums = _checked(
                plan.block([z[sub] for z in logits], [e[sub] for e in chunk_extras], wants, weights), weights
            )
            total = sums if total is None else total + sums
        for k, g in enumerate(groups):
            x, buf = stacked[k]
            if all(grad_x[i] is not None for i in g) and len(g) > 1:
                gx = torch.mm(buf, group_w[k])  # every head of the group: one matmul, then the rows apart
                for j, i in enumerate(g):
                    grad_x[i][rows] = gx[j * r : (j + 1) * r]
            else:
                for i in g:
                    if grad_x[i] is not None:
                        torch.mm(logits[i], group_w[k], out=grad_x[i][rows])
            for i in g:
                if grad_w[i] is not None:
                    grad_w[i].addmm_(logits[i].T, hidden[i])
    assert total is not None
    # fp32 gradients; autograd casts each to its input's dtype (bf16 weights get bf16 gradients).
    return total, grad_x + grad_w


class _FusedHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan: _Plan, *tensors: Tensor):  # type: ignore[override]
        xs, ws = tensors[: plan.n_heads], tensors[plan.n_heads : 2 * plan.n_heads]
        extras = tensors[2 * plan.n_heads :]
        with torch.autocast(device_type=xs[0].device.type, enabled=False):
            sums, grads = _run(plan, xs, ws, extras)
        ctx.save_for_backward(*grads)
        ctx.n_extras = len(extras)
        ctx.mark_non_differentiable(sums)
        loss = (sums * plan.weights.to(device=sums.device, dtype=sums.dtype)).sum()
        return loss, sums

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_sums: Tensor):  # type: ignore[override]
        # The stored gradients are those of `loss`; an upstream factor other than 1 rescales them (a copy, so a
        # second backward through a retained graph still starts from the stored ones).
        grads = list(ctx.saved_tensors)
        if not bool(grad_loss == 1):
            grads = [None if g is None else g * grad_loss.to(g.dtype) for g in grads]
        return (None, *grads, *([None] * ctx.n_extras))


def _block_elements(device: torch.device) -> int:
    return BLOCK_ELEMENTS if device.type == "cpu" else ACCELERATOR_BLOCK_ELEMENTS


def fused_sum(
    loss: BlockLoss | Callable[..., Tensor],
    heads: Sequence[Head],
    *extras: Tensor,
    weights: Sequence[float] | Tensor,
    chunk_rows: int,
    block_rows: int | None = None,
) -> tuple[Tensor, Tensor]:
    """`(weights · sums, sums)` where `sums = Σ_rows loss(z_1, …, z_h, *extras)` over the heads' logits.

    `loss` is either a plain `fn(*logits, *extras) -> sums [k]` (differentiated by autograd one block at a time)
    or a `BlockLoss`. Every head's hidden states and every extra
    share dim 0 (the N positions). Gradients reach the heads' hidden states and weights (those that require
    one); extras (labels, masks, teacher-side tensors) are constants. `block_rows` defaults to a block of
    `BLOCK_ELEMENTS` logits over all heads on CPU, `ACCELERATOR_BLOCK_ELEMENTS` elsewhere.
    """
    if not heads:
        raise ValueError("fused_sum needs at least one head")
    for name, value in (("chunk_rows", chunk_rows), ("block_rows", block_rows)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    n = heads[0].hidden.shape[0]
    for t in [h.hidden for h in heads] + list(extras):
        if t.shape[0] != n:
            raise ValueError(
                f"heads' hidden states and extras must share dim 0 (N={n}), got {tuple(t.shape)}"
            )
    for h in heads:
        if h.hidden.dim() != 2 or h.weight.dim() != 2 or h.hidden.shape[1] != h.weight.shape[1]:
            raise ValueError(
                f"a head needs hidden [N, d] and weight [V, d], got {tuple(h.hidden.shape)} and "
                f"{tuple(h.weight.shape)}"
            )
    weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    block = loss if isinstance(loss, BlockLoss) else AutogradBlock(loss)
    width = sum(h.weight.shape[0] for h in heads)
    plan = _Plan(
        block=block,
        weights=weights,
        n_heads=len(heads),
        chunk_rows=chunk_rows,
        block_rows=block_rows or max(1, _block_elements(heads[0].hidden.device) // max(width, 1)),
        need_grad=torch.is_grad_enabled(),
    )
    hidden = [h.hidden for h in heads]
    weights_ = [h.weight for h in heads]
    return _FusedHeads.apply(plan, *hidden, *weights_, *extras)
