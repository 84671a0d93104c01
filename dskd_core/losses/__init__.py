"""Divergences between a trained distribution q (student logits) and a target p (teacher logits).

`divergence(name, student_logits, teacher_logits, *, temperature=1.0, **params)` returns per-position values
(shape `logits.shape[:-1]`) computed in fp32 (fp64 inputs stay fp64). `DIVERGENCES` maps each name of
`dskd_core.spec.Divergence` to a function `fn(log_q, log_p, **params)` on log-probabilities.

Exact zeros are handled in log space: a target column with probability 0 contributes 0 to FKL/JS/skew terms and
their gradients. Where the *reference* side of a KL is 0 under mass of the other side (RKL with a teacher −inf
column the student still supports, FKL with a student −inf column the teacher supports), the value is +inf,
which is the true divergence; mixtures (js, gjsd, skl/srkl with λ > 0) stay finite there.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

from torch import Tensor

from dskd_core.losses._common import compute_dtype, log_probs
from dskd_core.losses.akl import adaptive_kl
from dskd_core.losses.fkl import forward_kl
from dskd_core.losses.gjsd import generalised_jsd
from dskd_core.losses.js import jensen_shannon
from dskd_core.losses.rkl import reverse_kl
from dskd_core.losses.skl import skew_forward_kl
from dskd_core.losses.srkl import skew_reverse_kl
from dskd_core.losses.tvd import total_variation

DivergenceFn = Callable[..., Tensor]

DIVERGENCES: dict[str, DivergenceFn] = {
    "fkl": forward_kl,
    "rkl": reverse_kl,
    "js": jensen_shannon,
    "gjsd": generalised_jsd,
    "skl": skew_forward_kl,
    "srkl": skew_reverse_kl,
    "tvd": total_variation,
    "akl": adaptive_kl,
}


def divergence_params(name: str) -> dict[str, float]:
    """The keyword parameters a divergence accepts, with their defaults."""
    fn = _lookup(name)
    sig = inspect.signature(fn)
    return {n: p.default for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _lookup(name: str) -> DivergenceFn:
    fn = DIVERGENCES.get(name) if isinstance(name, str) else None
    if fn is None:
        raise ValueError(f"unknown divergence {name!r}; valid choices: {', '.join(DIVERGENCES)}")
    return fn


def divergence(
    name: str,
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    **params: float,
) -> Tensor:
    """Per-position divergence D(p ‖ q) with p = softmax(teacher/τ) (target), q = softmax(student/τ) (trained)."""
    fn = _lookup(name)
    allowed = divergence_params(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        valid = ", ".join(allowed) if allowed else "none"
        raise ValueError(f"divergence {name!r} got unknown parameter(s) {unknown}; valid parameters: {valid}")
    if isinstance(temperature, bool) or not (
        isinstance(temperature, (int, float)) and math.isfinite(temperature)
    ):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits must have the same shape (restrict both to the real vocabulary first), "
            f"got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    dtype = compute_dtype(student_logits, teacher_logits)
    log_q = log_probs(student_logits, temperature, dtype)
    log_p = log_probs(teacher_logits, temperature, dtype)
    return fn(log_q, log_p, **params)


__all__ = ["DIVERGENCES", "divergence", "divergence_params"]
