"""Distillation methods, one file each, registered into a closed registry (see base.py)."""

# Importing a method's module registers it.
from dskd_core.distillers import dskd, sft, vanilla_kd  # noqa: F401
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
