"""The distiller interface and the closed method registry.

A distiller is an `nn.Module` holding the method's own trainable parts (projectors, query maps) as
submodules, so they are saved, resumed and exported with the training state. It does not own the student or the
teacher (they are passed in and kept as plain attributes, outside its state dict).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from dskd_core.spec import JobSpec, Method


@dataclass(frozen=True)
class TokenCounts:
    """Valid label tokens of the whole optimisation step (all micro-batches, all ranks).

    Every loss term divides its sum by one of these, so the per-token mean does not depend on how the step
    was split into micro-batches.
    """

    student: float
    teacher: float = 0.0  # teacher-side label tokens (cross-vocabulary methods)
    kd_student: float | None = None  # on-policy: tokens of the KD batch when it differs from the CE batch
    kd_teacher: float | None = None


@dataclass
class LossOutput:
    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class DistillContext:
    """Everything a distiller may need at construction time."""

    spec: JobSpec
    student: nn.Module
    teacher: nn.Module | None
    student_tokenizer: Any
    teacher_tokenizer: Any | None
    # Cross-vocabulary pairs: teacher id -> student id (-1 = no match), on the student's device.
    vocab_map: torch.Tensor | None = None


class Distiller(nn.Module):
    method: ClassVar[Method]

    def __init__(self, ctx: DistillContext) -> None:
        super().__init__()
        self.spec = ctx.spec
        # Stored outside the module tree: not part of this module's state_dict or parameters().
        object.__setattr__(self, "student", ctx.student)
        object.__setattr__(self, "teacher", ctx.teacher)
        self.student_tokenizer = ctx.student_tokenizer
        self.teacher_tokenizer = ctx.teacher_tokenizer

    def forward(self, batch: dict[str, torch.Tensor], tokens: TokenCounts) -> LossOutput:  # pragma: no cover
        raise NotImplementedError

    def export_state(self) -> dict[str, torch.Tensor]:
        """Tensors exported beside the student (projectors.safetensors); by default this module's own state."""
        return {k: v.detach().contiguous() for k, v in self.state_dict().items()}

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups: student parameters at `lr`, this distiller's parameters at `projector_lr`."""
        t = self.spec.training
        decay, no_decay = [], []
        for name, p in self.student.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
        groups = [
            {"name": "student", "params": decay, "lr": t.lr, "weight_decay": t.weight_decay},
            {"name": "student_no_decay", "params": no_decay, "lr": t.lr, "weight_decay": 0.0},
        ]
        own = [p for p in self.parameters() if p.requires_grad]
        if own:
            groups.append(
                {"name": "projectors", "params": own, "lr": t.projector_lr, "weight_decay": t.weight_decay}
            )
        return [g for g in groups if g["params"]]


_REGISTRY: dict[Method, type[Distiller]] = {}


def register(method: Method) -> Callable[[type[Distiller]], type[Distiller]]:
    def wrap(cls: type[Distiller]) -> type[Distiller]:
        if method in _REGISTRY:
            raise RuntimeError(f"method {method.value} registered twice")
        cls.method = method
        _REGISTRY[method] = cls
        return cls

    return wrap


def get_distiller_class(method: Method | str) -> type[Distiller]:
    method = Method(method)
    try:
        return _REGISTRY[method]
    except KeyError:
        raise ValueError(f"method '{method.value}' is not available in this build") from None


def registered_methods() -> list[Method]:
    return list(_REGISTRY)
