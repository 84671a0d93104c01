"""Total variation distance: ½ Σ |p − q|."""

from torch import Tensor


def total_variation(log_q: Tensor, log_p: Tensor) -> Tensor:
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)
