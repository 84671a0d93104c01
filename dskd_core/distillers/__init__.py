"""Distillation methods, one file each, registered into a closed registry (see base.py)."""

# Importing a method's module registers it.
from dskd_core.distillers import (  # noqa: F401
    dskd,
    dskd_cma,
    dskd_eta,
    mined,
    seqkd,
    sft,
    shared_vocab_kd,
    uld,
    vanilla_kd,
)
from dskd_core.distillers.base import (
    DistillContext,
    Distiller,
    LossOutput,
    TokenCounts,
    get_distiller_class,
    register,
    registered_methods,
)

__all__ = [
    "DistillContext",
    "Distiller",
    "LossOutput",
    "TokenCounts",
    "get_distiller_class",
    "register",
    "registered_methods",
]
