"""Generalised JSD: β KL(p‖m) + (1−β) KL(q‖m), m = βp + (1−β)q.

β = 0.5 is `js`. Near the ends it vanishes linearly: gjsd/β → FKL as β → 0 and gjsd/(1−β) → RKL as β → 1
(the other term is O(β²) resp. O((1−β)²), half a χ² divergence), so it is a *scaled* FKL/RKL there.
At exactly β = 0 or 1 the mixture equals one side and the value is 0.
"""

from torch import Tensor

from dskd_core.losses._common import check_unit_interval, kl, log_mixture


def generalised_jsd(log_q: Tensor, log_p: Tensor, *, beta: float = 0.5) -> Tensor:
    beta = check_unit_interval("beta", beta)
    if beta in (0.0, 1.0):
        return (log_q * 0.0).sum(-1)  # grad-connected zero of the right shape
    log_m = log_mixture(log_p, log_q, beta)
    return beta * kl(log_p, log_m) + (1.0 - beta) * kl(log_q, log_m)
