"""Shared log-space helpers for the divergences (methods.md §1).

Every divergence receives log-probabilities `log_q` (the distribution being trained) and `log_p` (the target),
already in the compute dtype, and returns per-position values (the last dimension is summed).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """fp32 for bf16/fp16/fp32 inputs; fp64 is kept so that gradcheck can run on the double path."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def log_probs(logits: Tensor, temperature: float, dtype: torch.dtype) -> Tensor:
    z = logits.to(dtype)
    if temperature != 1.0:
        z = z / temperature
    return torch.log_softmax(z, dim=-1)


def kl_terms(log_a: Tensor, log_b: Tensor) -> Tensor:
    """Per-column a·(log a − log b), exactly 0 where a = 0.

    The difference is replaced before the product (not after) so that a −inf − (−inf) in an unused column
    cannot reach the gradient as 0·NaN.
    """
    a = log_a.exp()
    diff = torch.where(a > 0, log_a - log_b, 0.0)
    return a * diff


def kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """KL(a ‖ b) per position; +inf where a has mass on a column where b is exactly 0 (the true value)."""
    return kl_terms(log_a, log_b).sum(-1)


def log_mixture(log_a: Tensor, log_b: Tensor, weight_a: float) -> Tensor:
    """log(w·a + (1−w)·b) for 0 < w < 1, in log space.

    Log-probabilities are floored at the dtype's most negative finite value: logaddexp(−inf, −inf) has a NaN
    gradient, and a column where both a and b are 0 must stay harmless.
    """
    floor = torch.finfo(log_a.dtype).min
    return torch.logaddexp(
        log_a.clamp(min=floor) + math.log(weight_a), log_b.clamp(min=floor) + math.log1p(-weight_a)
    )


def check_unit_interval(name: str, value: float, *, allow_zero: bool = True) -> float:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    in_range = is_number and (value >= 0.0 if allow_zero else value > 0.0) and value <= 1.0
    if not in_range:
        bound = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"{name} must be a number in {bound}, got {value!r}")
    return float(value)
