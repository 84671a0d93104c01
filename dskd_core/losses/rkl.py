"""Reverse KL: Σ q (log q − log p), mode-seeking."""

from torch import Tensor

from dskd_core.losses._common import kl


def reverse_kl(log_q: Tensor, log_p: Tensor) -> Tensor:
    return kl(log_q, log_p)
