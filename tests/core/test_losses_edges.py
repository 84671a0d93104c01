"""Divergence edge cases that mutation testing found unasserted: the degenerate parameters on [B, T, V] logits,
the name of a bad parameter in its error, a non-string divergence name, and fp64 kept for mixed inputs."""

from __future__ import annotations

import pytest
import torch

from dskd_core.losses import divergence

LOGITS = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(0))
TEACHER = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("name", "params"),
    [("gjsd", {"beta": 0.0}), ("skl", {"skew_lambda": 1.0}), ("srkl", {"skew_lambda": 1.0})],
)
def test_degenerate_parameters_give_zero_per_position(name: str, params: dict) -> None:
    student = LOGITS.clone().requires_grad_()
    value = divergence(name, student, TEACHER, **params)
    assert value.shape == (2, 3) and torch.count_nonzero(value) == 0
    value.sum().backward()  # still connected to the graph
    assert student.grad is not None


@pytest.mark.parametrize("name", ["skl", "srkl"])
def test_an_out_of_range_skew_names_the_parameter(name: str) -> None:
    with pytest.raises(ValueError, match=r"\bskew_lambda\b"):
        divergence(name, LOGITS, TEACHER, skew_lambda=1.5)


@pytest.mark.parametrize("name", [["fkl"], None, 3])
def test_a_name_that_is_not_a_string_is_a_clear_value_error(name) -> None:
    with pytest.raises(ValueError, match="unknown divergence"):
        divergence(name, LOGITS, TEACHER)


def test_fp64_on_either_side_computes_in_fp64() -> None:
    assert divergence("fkl", LOGITS.double(), TEACHER).dtype == torch.float64
    assert divergence("fkl", LOGITS, TEACHER.double()).dtype == torch.float64
    assert divergence("fkl", LOGITS.bfloat16(), TEACHER.half()).dtype == torch.float32
