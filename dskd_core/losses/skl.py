"""Skew forward KL: KL(p ‖ λp + (1−λ)q); λ = 0 is FKL, λ = 1 is 0."""

from torch import Tensor

from dskd_core.losses._common import check_unit_interval, kl, log_mixture


def skew_forward_kl(log_q: Tensor, log_p: Tensor, *, skew_lambda: float = 0.1) -> Tensor:
    lam = check_unit_interval("skew_lambda", skew_lambda)
    if lam == 0.0:
        return kl(log_p, log_q)
    if lam == 1.0:
        return (log_q * 0.0).sum(-1)
    return kl(log_p, log_mixture(log_p, log_q, lam))
