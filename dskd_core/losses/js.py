"""Jensen–Shannon: ½ KL(p‖m) + ½ KL(q‖m), m = (p + q)/2."""

from torch import Tensor

from dskd_core.losses._common import kl, log_mixture


def jensen_shannon(log_q: Tensor, log_p: Tensor) -> Tensor:
    log_m = log_mixture(log_p, log_q, 0.5)
    return 0.5 * kl(log_p, log_m) + 0.5 * kl(log_q, log_m)
