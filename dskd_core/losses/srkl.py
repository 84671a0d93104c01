"""Skew reverse KL: KL(q ‖ (1−λ)p + λq); λ = 0 is RKL, λ = 1 is 0."""

from torch import Tensor

from dskd_core.losses._common import check_unit_interval, kl, log_mixture


def skew_reverse_kl(log_q: Tensor, log_p: Tensor, *, skew_lambda: float = 0.1) -> Tensor:
    lam = check_unit_interval("skew_lambda", skew_lambda)
    if lam == 0.0:
        return kl(log_q, log_p)
    if lam == 1.0:
        return (log_q * 0.0).sum(-1)
    return kl(log_q, log_mixture(log_q, log_p, lam))
