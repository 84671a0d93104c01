"""Adaptive KL (Wu et al. 2024): FKL and RKL weighted by how far q is from p in the head and in the tail of p.

Sort p ascending (q carried along); the tail is the low-probability entries whose cumulative p is ≤ α. The
weights g_head/(g_head + g_tail + ε) and g_tail/(…) are detached, so the gradient is the weighted sum of the
FKL and RKL gradients. ε keeps identical inputs at 0 instead of 0/0.
"""

import torch
from torch import Tensor

from dskd_core.losses._common import check_unit_interval, kl

EPS = 1e-8


def adaptive_kl(log_q: Tensor, log_p: Tensor, *, alpha: float = 0.5) -> Tensor:
    alpha = check_unit_interval("alpha", alpha, allow_zero=False)
    with torch.no_grad():
        p, q = log_p.exp(), log_q.exp()
        p_sorted, order = p.sort(dim=-1)
        gap = (p_sorted - q.gather(-1, order)).abs()
        # α = 1 puts everything in the tail exactly; a rounded cumsum of 1.0000001 must not move the top entry.
        in_tail = p_sorted.cumsum(-1) <= alpha if alpha < 1.0 else torch.ones_like(p_sorted, dtype=torch.bool)
        g_tail = (gap * in_tail).sum(-1)
        g_head = (gap * ~in_tail).sum(-1)
        denom = g_head + g_tail + EPS
    return (g_head / denom) * kl(log_p, log_q) + (g_tail / denom) * kl(log_q, log_p)
