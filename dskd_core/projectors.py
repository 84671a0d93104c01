"""Projectors between the student's and the teacher's hidden spaces (DSKD, methods.md §2.2).

Convention: a projector maps hidden states `h [N, d_in] -> [N, d_out]` as `h @ weight.T (+ bias)`, the same
layout as `nn.Linear`, so exported weights read the same whatever the initialisation.

- `ideal_t2s`: a Linear d_t → d_s initialised to the least-squares map X with `W_s · X ≈ W_t`, so that
  `h_t · X^T · W_s^T ≈ h_t · W_t^T` (projection preserves the teacher's logits through the student head).
- `PseudoInverseProjector`: the parameter-free s2t map of DSKD v2, recomputed every step from the current
  (detached) student head and a cached pseudo-inverse of the frozen teacher head.
"""

from __future__ import annotations

import torch
from torch import nn


def ideal_map(source_head: torch.Tensor, target_head: torch.Tensor) -> torch.Tensor:
    """The weight [d_src_head, d_tgt_head] X minimising ||source_head · X − target_head||_F, in fp32.

    For t2s: `source_head = W_s [V, d_s]`, `target_head = W_t [V, d_t]`, so X = pinv(W_s) · W_t
    = (W_t^T · pinv(W_s^T))^T, the weight of a Linear d_t → d_s.
    """
    if source_head.shape[0] != target_head.shape[0]:
        raise ValueError(
            f"heads cover different vocabularies: {source_head.shape[0]} vs {target_head.shape[0]} rows"
        )
    with torch.no_grad():
        return torch.linalg.pinv(source_head.detach().float()) @ target_head.detach().float()


def ideal_t2s(teacher_head: torch.Tensor, student_head: torch.Tensor) -> nn.Linear:
    """A trainable Linear d_t → d_s (no bias) initialised so that projected teacher states keep their logits."""
    d_s, d_t = student_head.shape[1], teacher_head.shape[1]
    layer = nn.Linear(d_t, d_s, bias=False, device=student_head.device, dtype=torch.float32)
    with torch.no_grad():
        layer.weight.copy_(ideal_map(student_head, teacher_head))
    return layer


def random_linear(d_in: int, d_out: int, device: torch.device | str) -> nn.Linear:
    """DSKD v1's projector: a randomly initialised Linear with bias, trained at projector_lr."""
    return nn.Linear(d_in, d_out, bias=True, device=device, dtype=torch.float32)


class PseudoInverseProjector(nn.Module):
    """s2t without parameters: P = W_s^T · pinv(W_t^T) (d_s × d_t) from the current student head.

    `pinv(W_t^T)` [V, d_t] is computed once in fp32 from the frozen teacher head; it is a non-persistent buffer
    (rebuilt at construction, so a checkpoint does not carry it).
    """

    def __init__(self, teacher_head: torch.Tensor) -> None:
        super().__init__()
        with torch.no_grad():
            pinv = torch.linalg.pinv(teacher_head.detach().float().T)
        self.register_buffer("teacher_pinv", pinv, persistent=False)

    def matrix(self, student_head: torch.Tensor) -> torch.Tensor:
        """P [d_s, d_t]; the student head is detached: it is the map, not a path for gradients."""
        if student_head.shape[0] != self.teacher_pinv.shape[0]:
            raise ValueError(
                f"student head has {student_head.shape[0]} rows, the cached pseudo-inverse {self.teacher_pinv.shape[0]}"
            )
        with torch.no_grad(), torch.autocast(device_type=student_head.device.type, enabled=False):
            return student_head.detach().float().T @ self.teacher_pinv

    def weight_from(self, student_head: torch.Tensor) -> torch.Tensor:
        """P in Linear layout [d_t, d_s] (for export beside the trainable projectors)."""
        return self.matrix(student_head).T.contiguous()
