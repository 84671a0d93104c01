"""Forward KL: Σ p (log p − log q), mass-covering."""

from torch import Tensor

from dskd_core.losses._common import kl


def forward_kl(log_q: Tensor, log_p: Tensor) -> Tensor:
    return kl(log_p, log_q)
