"""Fused head losses (`dskd_core.fused`) and the chunk-size budget (`reduce.chunk_rows`): chunked and blocked
evaluation gives the unchunked loss and gradients, a chunk's logits stay under the budget."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dskd_core import fused
from dskd_core.fused import Head, fused_sum
from dskd_core.losses import divergence
from dskd_core.reduce import chunk_rows
from dskd_core.spec import MIN_CHUNK_ROWS, DistillSpec

V, D_S, D_T, N = 29, 8, 6, 23


def _inputs(seed: int = 0, scale: float = 1.0, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    h_s = (torch.randn(N, D_S, generator=g) * scale).to(dtype).requires_grad_()
    w_s = torch.randn(V, D_S, generator=g).to(dtype).requires_grad_()
    h_t = (torch.randn(N, D_T, generator=g) * scale).to(dtype)
    w_t = torch.randn(V, D_T, generator=g).to(dtype)
    y = torch.randint(0, V, (N,), generator=g)
    mask = torch.rand(N, generator=g) > 0.3
    return h_s, w_s, h_t, w_t, y, mask


def _ce_kd(name: str = "fkl", tau: float = 2.0):
    def sums(z_s, z_t, y, mask):
        ce = F.cross_entropy(z_s, y, reduction="sum")
        kd = divergence(name, z_s, z_t, temperature=tau)
        kd = torch.where(mask, kd, 0.0).sum()  # masked rows: no KD, whatever their values
        return torch.stack([ce, kd, mask.sum().float()])

    return sums


def _reference(h_s, w_s, h_t, w_t, y, mask, weights, name="fkl", tau=2.0):
    """All positions at once in fp64, plain autograd: the value and gradients fused_sum must reproduce."""
    z_s = h_s.double() @ w_s.double().T
    z_t = (h_t.double() @ w_t.double().T).detach()
    sums = _ce_kd(name, tau)(z_s, z_t, y, mask)
    loss = (sums * torch.tensor(weights, dtype=torch.float64)).sum()
    return loss, sums, [g.double() for g in torch.autograd.grad(loss, (h_s, w_s))]


@pytest.mark.parametrize(("chunk", "block"), [(1, None), (4, 1), (5, 3), (16, 7), (100, None)])
@pytest.mark.parametrize("name", ["fkl", "rkl", "akl"])
def test_chunked_and_blocked_equal_unchunked_loss_and_gradients(chunk, block, name):
    h_s, w_s, h_t, w_t, y, mask = _inputs()
    weights = [0.3, 0.7, 0.0]
    loss, sums = fused_sum(
        _ce_kd(name),
        [Head(h_s, w_s), Head(h_t, w_t)],
        y,
        mask,
        weights=weights,
        chunk_rows=chunk,
        block_rows=block,
    )
    grads = torch.autograd.grad(loss, (h_s, w_s))
    want_loss, want_sums, want_grads = _reference(h_s, w_s, h_t, w_t, y, mask, weights, name)
    torch.testing.assert_close(loss.double(), want_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sums.double(), want_sums.detach(), rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_identical_inputs_give_zero_kd_and_the_ce_gradient_only():
    h_s, w_s, _, _, y, mask = _inputs()
    heads = [Head(h_s, w_s), Head(h_s.detach(), w_s.detach())]
    loss, sums = fused_sum(_ce_kd(), heads, y, mask, weights=[1.0, 1.0, 0.0], chunk_rows=4, block_rows=3)
    assert abs(sums[1].item()) < 1e-5
    grads = torch.autograd.grad(loss, (h_s, w_s))
    ce = F.cross_entropy(h_s @ w_s.T, y, reduction="sum")
    for got, want in zip(grads, torch.autograd.grad(ce, (h_s, w_s)), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_extreme_logits_stay_finite_and_match():
    h_s, w_s, h_t, w_t, y, mask = _inputs(scale=300.0)  # logits in the thousands
    weights = [0.5, 0.5, 0.0]
    loss, _ = fused_sum(_ce_kd(), [Head(h_s, w_s), Head(h_t, w_t)], y, mask, weights=weights, chunk_rows=4)
    grads = torch.autograd.grad(loss, (h_s, w_s))
    want_loss, _, want_grads = _reference(h_s, w_s, h_t, w_t, y, mask, weights)
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
    torch.testing.assert_close(loss.double(), want_loss, rtol=1e-4, atol=1e-2)
    for got, want in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-2)


def test_bf16_inputs_compute_in_fp32_and_return_bf16_gradients():
    h_s, w_s, h_t, w_t, y, mask = _inputs(dtype=torch.bfloat16)
    weights = [0.5, 0.5, 0.0]
    loss, _ = fused_sum(_ce_kd(), [Head(h_s, w_s), Head(h_t, w_t)], y, mask, weights=weights, chunk_rows=5)
    g_h, g_w = torch.autograd.grad(loss, (h_s, w_s))
    assert loss.dtype == torch.float32 and g_h.dtype == g_w.dtype == torch.bfloat16
    want_loss, _, want_grads = _reference(h_s, w_s, h_t, w_t, y, mask, weights)  # the bf16 values, in fp64
    torch.testing.assert_close(loss.double(), want_loss, rtol=1e-5, atol=1e-5)
    for got, want in zip((g_h, g_w), want_grads, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-2, atol=1e-2)  # bf16 rounding of the result


def test_under_bf16_autocast_the_loss_runs_in_fp32():
    h_s, w_s, h_t, w_t, y, mask = _inputs()
    weights = [0.5, 0.5, 0.0]
    dtypes = set()

    def sums(z_s, z_t, y, mask):
        dtypes.add((z_s @ z_t.T).dtype)  # a matmul autocast would run in bf16
        return _ce_kd()(z_s, z_t, y, mask)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = fused_sum(sums, [Head(h_s, w_s), Head(h_t, w_t)], y, mask, weights=weights, chunk_rows=4)
    assert dtypes == {torch.float32}
    want_loss, _, _ = _reference(h_s, w_s, h_t, w_t, y, mask, weights)
    torch.testing.assert_close(loss.double(), want_loss, rtol=1e-5, atol=1e-5)


def test_gradients_reach_projections_and_only_heads_that_want_them():
    h_s, w_s, h_t, _, y, _ = _inputs()
    proj = torch.nn.Linear(D_T, D_S)
    frozen = w_s.detach()

    def sums(z_s, z_p, y):
        return torch.stack(
            [F.cross_entropy(z_s, y, reduction="sum"), F.cross_entropy(z_p, y, reduction="sum")]
        )

    heads = [Head(h_s, w_s), Head(proj(h_t), frozen)]
    loss, _ = fused_sum(sums, heads, y, weights=[1.0, 2.0], chunk_rows=6, block_rows=4)
    loss.backward()
    z_p = proj(h_t) @ frozen.T
    h_s2, w_s2 = h_s.detach().clone().requires_grad_(), w_s.detach().clone().requires_grad_()
    want = F.cross_entropy(h_s2 @ w_s2.T, y, reduction="sum") + 2.0 * F.cross_entropy(z_p, y, reduction="sum")
    want_grads = torch.autograd.grad(want, (h_s2, w_s2, proj.weight, proj.bias))
    for got, w in zip((h_s.grad, w_s.grad, proj.weight.grad, proj.bias.grad), want_grads, strict=True):
        torch.testing.assert_close(got, w, rtol=1e-5, atol=1e-5)


def test_upstream_factor_scales_the_gradient_and_a_retained_graph_backpropagates_twice():
    h_s, w_s, h_t, w_t, y, mask = _inputs()
    loss, _ = fused_sum(_ce_kd(), [Head(h_s, w_s), Head(h_t, w_t)], y, mask, weights=[1, 1, 0], chunk_rows=4)
    (once,) = torch.autograd.grad(loss, (h_s,), retain_graph=True)
    (tripled,) = torch.autograd.grad(3.0 * loss, (h_s,), retain_graph=True)
    (again,) = torch.autograd.grad(loss, (h_s,))
    torch.testing.assert_close(tripled, 3.0 * once)
    torch.testing.assert_close(again, once)


def test_no_grad_gives_the_value_only_and_empty_input_gives_connected_zeros():
    h_s, w_s, h_t, w_t, y, mask = _inputs()
    heads = [Head(h_s, w_s), Head(h_t, w_t)]
    want, _ = fused_sum(_ce_kd(), heads, y, mask, weights=[1, 1, 0], chunk_rows=4)
    with torch.no_grad():
        got, _ = fused_sum(_ce_kd(), heads, y, mask, weights=[1, 1, 0], chunk_rows=4)
    assert not got.requires_grad
    torch.testing.assert_close(got, want.detach())
    empty = [Head(h_s[:0], w_s), Head(h_t[:0], w_t)]
    loss, sums = fused_sum(_ce_kd(), empty, y[:0], mask[:0], weights=[1, 1, 0], chunk_rows=4)
    assert sums.shape == (3,) and torch.equal(sums, torch.zeros(3)) and loss.item() == 0.0
    g_h, g_w = torch.autograd.grad(loss, (h_s, w_s))
    assert torch.equal(g_h, torch.zeros_like(g_h)) and torch.equal(g_w, torch.zeros_like(g_w))


def test_bad_arguments_name_the_problem():
    h_s, w_s, h_t, w_t, y, mask = _inputs()
    heads = [Head(h_s, w_s), Head(h_t, w_t)]
    with pytest.raises(ValueError, match="chunk_rows"):
        fused_sum(_ce_kd(), heads, y, mask, weights=[1, 1, 0], chunk_rows=0)
    with pytest.raises(ValueError, match="dim 0"):
        fused_sum(_ce_kd(), heads, y[:-1], mask, weights=[1, 1, 0], chunk_rows=4)
    with pytest.raises(ValueError, match="one per weight"):
        fused_sum(_ce_kd(), heads, y, mask, weights=[1, 1, 0, 0], chunk_rows=4)
    with pytest.raises(ValueError, match="weight"):
        fused_sum(_ce_kd(), [Head(h_s, w_t)], y, mask, weights=[1, 1, 0], chunk_rows=4)
    for bad in (True, 2.5, -3):
        with pytest.raises(ValueError, match="chunk_rows must be a positive int"):
            fused_sum(_ce_kd(), heads, y, mask, weights=[1, 1, 0], chunk_rows=bad)
        with pytest.raises(ValueError, match="block_rows must be a positive int"):
            fused_sum(_ce_kd(), heads, y, mask, weights=[1, 1, 0], chunk_rows=4, block_rows=bad)
    with pytest.raises(ValueError, match=r"hidden \[N, d\]"):  # a 3-D hidden state, its last dims right
        fused_sum(
            _ce_kd(), [Head(h_s[:, :, None], w_s), Head(h_t, w_t)], y, mask, weights=[1, 1, 0], chunk_rows=4
        )


# ---- the budget ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("widths", [(32_000,), (151_936,), (151_936, 151_936), (32_000,) * 4, (50, 70)])
@pytest.mark.parametrize("budget", [2**20, 2**25, 10**7])
def test_budget_keeps_a_chunks_logits_under_it(widths, budget):
    rows = chunk_rows(*widths, budget=budget)
    assert rows >= MIN_CHUNK_ROWS
    if MIN_CHUNK_ROWS * sum(widths) <= budget:
        assert rows * sum(widths) <= budget < (rows + 1) * sum(widths)  # the most rows the budget allows
    else:
        assert rows == MIN_CHUNK_ROWS
    assert chunk_rows(*widths, budget=budget, override=64) == 64
    with pytest.raises(ValueError, match="budget"):
        chunk_rows(*widths, budget=0)
    with pytest.raises(ValueError, match="widths"):
        chunk_rows(budget=budget)


def test_fused_sum_holds_the_chunk_logits_in_budget_sized_buffers(monkeypatch):
    """The buffers a step allocates hold at most the budget's elements (here 3 chunks of rows, 2 heads)."""
    h_s, w_s, h_t, w_t, y, mask = _inputs()
    seen = []
    real_get = fused._Buffers.get

    def get(self, i, rows):
        out = real_get(self, i, rows)
        seen.append(out._base.shape if out._base is not None else out.shape)
        return out

    monkeypatch.setattr(fused._Buffers, "get", get)
    budget = 20 * 2 * V
    spec = DistillSpec(loss_chunk_elements=2**16)
    assert spec.loss_chunk_size is None  # the default is the budget, not a fixed row count
    rows = chunk_rows(V, V, budget=budget)
    fused_sum(_ce_kd(), [Head(h_s, w_s), Head(h_t, w_t)], y, mask, weights=[1, 1, 0], chunk_rows=rows)
    assert sum(shape.numel() for shape in set(seen)) <= budget
    assert len(seen) == 2 * -(-N // rows)  # every chunk used the two buffers


class _Recorder(fused.BlockLoss):
    """Sums of the logits, recording each block's row count and which heads it was asked a gradient for."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.wants: list[list[bool]] = []

    def __call__(self, logits, extras, wants, weights):
        self.rows.append(logits[0].shape[0])
        self.wants.append(list(wants))
        sums = torch.stack([z.sum() for z in logits])
        for z, w in zip(logits, wants, strict=True):
            if w:
                z.fill_(1.0)  # ∂(Σ z)/∂z
        return sums


def test_default_blocks_hold_the_most_rows_whose_logits_fit_the_block_budget(monkeypatch):
    monkeypatch.setattr(fused, "BLOCK_ELEMENTS", 1000)
    g = torch.Generator().manual_seed(0)
    heads = [Head(torch.randn(50, 4, generator=g), torch.randn(V, 4, generator=g)) for _ in range(3)]
    record = _Recorder()
    fused_sum(record, heads, weights=[1.0, 1.0, 1.0], chunk_rows=50)
    width = 3 * V  # all heads' logits of one row (not the hidden width)
    assert max(record.rows) == 1000 // width and sum(record.rows) == 50
    # One row's logits over the budget: blocks of one row, not more.
    monkeypatch.setattr(fused, "BLOCK_ELEMENTS", 2 * V - 1)
    record = _Recorder()
    fused_sum(record, heads[:2], weights=[1.0, 1.0], chunk_rows=50)
    assert set(record.rows) == {1}


def test_no_gradient_work_without_autograd_or_for_frozen_heads():
    h_s, w_s, h_t, w_t, _, _ = _inputs()
    heads = [Head(h_s, w_s), Head(h_t, w_t)]  # the teacher head and its hidden states are constants
    record = _Recorder()
    loss, _ = fused_sum(record, heads, weights=[1.0, 1.0], chunk_rows=8)
    assert record.wants and all(w == [True, False] for w in record.wants)
    g_h, g_w = torch.autograd.grad(loss, (h_s, w_s))
    torch.testing.assert_close(g_h, torch.ones(N, V) @ w_s.detach())  # ∂Σz/∂h = 1·W
    torch.testing.assert_close(g_w, torch.ones(V, N) @ h_s.detach())
    record = _Recorder()
    with torch.no_grad():
        fused_sum(record, heads, weights=[1.0, 1.0], chunk_rows=8)
    assert record.wants and all(w == [False, False] for w in record.wants)
