"""reduce.py edge cases that mutation testing found unasserted: one valid token, a frozen head, the errors."""

from __future__ import annotations

import pytest
import torch

from dskd_core.reduce import chunked_sum, fused_kd_loss_from_hidden, kd_loss_from_hidden, safe_div
from tests.core.test_reduce import V_REAL, _setup


def test_one_valid_token_is_divided_by_one() -> None:
    total = torch.tensor(3.0)
    assert safe_div(total, 1).item() == 3.0 and safe_div(total, 1.0).item() == 3.0
    assert safe_div(total, torch.tensor(1.0)).item() == 3.0
    assert safe_div(total, 0).item() == 0.0 and safe_div(total, 4).item() == 0.75


def test_a_frozen_head_still_trains_the_hidden_states() -> None:
    h_s, w_s, h_t, w_t, labels = _setup()
    w_s = w_s.detach()  # e.g. frozen (tied) embeddings: only the hidden states need a gradient
    kw = {"divergence_name": "fkl", "temperature": 2.0, "vocab_limit": V_REAL, "chunk_size": 4}
    sums = kd_loss_from_hidden(h_s, w_s, labels, h_t, w_t, **kw)
    (want,) = torch.autograd.grad(0.5 * sums[0] + 0.5 * sums[1], (h_s,))
    got = fused_kd_loss_from_hidden(h_s, w_s, labels, h_t, w_t, ce_weight=0.5, kd_weight=0.5, **kw)
    (grad,) = torch.autograd.grad(got, (h_s,))
    assert grad.abs().sum() > 0
    torch.testing.assert_close(grad, want)


def test_misuse_is_refused_with_a_message() -> None:
    with pytest.raises(ValueError, match="chunked_sum needs at least one tensor"):
        chunked_sum(lambda: torch.zeros(2), chunk_size=4)
    h_s, w_s, h_t, _, labels = _setup()
    with pytest.raises(ValueError, match="teacher_hidden given without teacher_head"):
        fused_kd_loss_from_hidden(h_s, w_s, labels, h_t, None, ce_weight=0.5, kd_weight=0.5)
