"""`dskd_core.fused_terms`: the analytic CE / forward-KL block gives the autograd block's and a dense fp64
reference's sums and gradients; heads that share a weight share one matmul per chunk (`fused._groups`). The
distillers that use it (dskd, dskd_eta) are checked on both paths in test_distillers / test_cross_distillers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dskd_core import fused, fused_terms
from dskd_core.fused import Head, fused_sum
from dskd_core.fused_terms import Terms, TermsBlock
from dskd_core.losses import divergence

V, W, D_S, D_T, N = 29, 31, 8, 6, 23


def _inputs(seed: int = 0, scale: float = 1.0):
    """DSKD-shaped heads: student [V] trained, teacher [W] frozen, t2s (projected teacher through the detached
    student head) and s2t (projected student through the frozen teacher head)."""
    g = torch.Generator().manual_seed(seed)
    h_s = (torch.randn(N, D_S, generator=g) * scale).requires_grad_()
    w_s = torch.randn(V, D_S, generator=g).requires_grad_()
    h_t = torch.randn(N, D_T, generator=g) * scale
    w_t = torch.randn(W, D_T, generator=g)
    t2s = torch.randn(D_S, D_T, generator=g).requires_grad_()
    s2t = torch.randn(D_T, D_S, generator=g).requires_grad_()
    y = torch.randint(0, V, (N,), generator=g)
    y[::5] = -100  # ignored rows
    mask = torch.rand(N, generator=g) > 0.3
    return h_s, w_s, h_t, w_t, t2s, s2t, y, mask


def _heads(h_s, w_s, h_t, w_t, t2s, s2t):
    return [
        Head(h_s, w_s),
        Head(h_t, w_t),
        Head(h_t @ t2s.T, w_s.detach()),
        Head(h_s @ s2t.T, w_t),
    ]


def _block(t: Terms, y: torch.Tensor, mask: torch.Tensor) -> None:
    t.ce(0, head=0, target=y)
    t.divergence(1, q=0, p=2, mask=mask)  # the target side has a CE of its own (slot 2): only that trains it
    t.ce(2, head=2, target=torch.where(mask, t.argmax(0), -100))
    t.divergence(3, q=3, p=1)
    t.count(4, t.argmax(2) == y)


WEIGHTS = [0.4, 0.9, 0.3, 1.7, 0.0]


def _reference(inputs, tau: float):
    """Full logits in fp64, plain autograd."""
    h_s, w_s, h_t, w_t, t2s, s2t, y, mask = inputs
    d = [x.double() for x in (h_s, w_s, h_t, w_t, t2s, s2t)]
    z_s, z_t = d[0] @ d[1].T, (d[2] @ d[3].T).detach()
    z_t2s, z_s2t = (d[2] @ d[4].T) @ d[1].detach().T, (d[0] @ d[5].T) @ d[3].T
    kd_stu = torch.where(mask, divergence("fkl", z_s, z_t2s.detach(), temperature=tau), 0.0).sum()
    ce_t2s_target = torch.where(mask, z_s.argmax(-1), -100)
    sums = torch.stack(
        [
            F.cross_entropy(z_s, y, ignore_index=-100, reduction="sum"),
            kd_stu,
            F.cross_entropy(z_t2s, ce_t2s_target, ignore_index=-100, reduction="sum"),
            divergence("fkl", z_s2t, z_t, temperature=tau).sum(),
            (z_t2s.argmax(-1) == y).sum().double(),
        ]
    )
    loss = (sums * torch.tensor(WEIGHTS, dtype=torch.float64)).sum()
    return loss, sums, [g.double() for g in torch.autograd.grad(loss, (h_s, w_s, t2s, s2t))]


def _fused(inputs, tau: float, *, analytic: bool, chunk: int, block: int | None):
    h_s, w_s, h_t, w_t, t2s, s2t, y, mask = inputs
    loss, sums = fused_sum(
        TermsBlock(_block, n_sums=5, divergence="fkl", temperature=tau, analytic=analytic),
        _heads(h_s, w_s, h_t, w_t, t2s, s2t),
        y,
        mask,
        weights=WEIGHTS,
        chunk_rows=chunk,
        block_rows=block,
    )
    return loss, sums, torch.autograd.grad(loss, (h_s, w_s, t2s, s2t))


@pytest.mark.parametrize("tau", [1.0, 2.0, 0.5])
@pytest.mark.parametrize(("chunk", "block"), [(100, None), (5, 1), (7, 3)])
@pytest.mark.parametrize("analytic", [True, False])
def test_both_paths_equal_the_dense_reference(tau, chunk, block, analytic):
    inputs = _inputs()
    loss, sums, grads = _fused(inputs, tau, analytic=analytic, chunk=chunk, block=block)
    want_loss, want_sums, want_grads = _reference(inputs, tau)
    torch.testing.assert_close(loss.double(), want_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sums.double(), want_sums, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def test_extreme_logits_stay_finite_and_match():
    inputs = _inputs(scale=100.0)  # logits in the hundreds to thousands: most probabilities underflow
    loss, sums, grads = _fused(inputs, 2.0, analytic=True, chunk=6, block=2)
    want_loss, want_sums, want_grads = _reference(inputs, 2.0)
    torch.testing.assert_close(loss.double(), want_loss, rtol=1e-4, atol=2e-2)
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
    torch.testing.assert_close(sums.double(), want_sums, rtol=1e-4, atol=2e-2)
    for got, want in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=2e-2)


def test_a_wanted_head_without_terms_gets_a_zero_gradient_and_no_grad_gives_values():
    h_s, w_s, *_, y, mask = _inputs()

    def counts_only(t: Terms, y: torch.Tensor) -> None:
        t.count(0, t.argmax(0) == y)

    for analytic in (True, False):
        block = TermsBlock(counts_only, n_sums=1, analytic=analytic)
        loss, sums = fused_sum(block, [Head(h_s, w_s)], y, weights=[1.0], chunk_rows=4)
        g_h, g_w = torch.autograd.grad(loss, (h_s, w_s))
        assert not g_h.any() and not g_w.any()
        assert sums.item() == ((h_s @ w_s.T).argmax(-1) == y).sum().item()
    inputs = _inputs()
    with torch.no_grad():
        got, got_sums = fused_sum(
            TermsBlock(_block, n_sums=5, temperature=2.0),
            _heads(*inputs[:6]),
            y,
            mask,
            weights=WEIGHTS,
            chunk_rows=4,
        )
    want, want_sums, _ = _reference(inputs, 2.0)
    assert not got.requires_grad
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_sums.double(), want_sums.detach(), rtol=1e-5, atol=1e-5)


def test_other_divergences_take_the_autograd_path_and_the_analytic_one_refuses_them():
    assert TermsBlock(_block, n_sums=5, divergence="fkl").analytic
    assert not TermsBlock(_block, n_sums=5, divergence="rkl").analytic
    with pytest.raises(ValueError, match="analytic"):
        TermsBlock(_block, n_sums=5, divergence="rkl", analytic=True)


# ---- heads sharing a weight ---------------------------------------------------------------------------------------
def test_heads_sharing_a_weight_share_one_matmul_per_chunk_and_give_the_same_gradients(monkeypatch):
    inputs = _inputs()
    h_s, w_s, h_t, w_t, t2s, s2t, y, mask = inputs
    assert fused._groups([w_s, w_t, w_s.detach(), w_t]) == [[0, 2], [1, 3]]
    assert fused._groups([w_s, w_s[:5], w_s.detach().clone()]) == [
        [0],
        [1],
        [2],
    ]  # same storage ≠ same weight

    calls = []
    real_mm = torch.mm

    def mm(a, b, **kw):
        calls.append((tuple(a.shape), tuple(b.shape)))
        return real_mm(a, b, **kw)

    monkeypatch.setattr(torch, "mm", mm)
    loss, sums, grads = _fused(inputs, 2.0, analytic=True, chunk=N, block=None)
    monkeypatch.setattr(torch, "mm", real_mm)
    forward = [c for c in calls if c[1][0] != V and c[1][0] != W]  # [rows, d] @ [d, V]
    assert sorted(forward) == sorted([((2 * N, D_S), (D_S, V)), ((2 * N, D_T), (D_T, W))])

    # The same loss with the student head cloned for t2s (no sharing): the same values and gradients.
    def unshared():
        w_copy = w_s.detach().clone()
        heads = _heads(h_s, w_s, h_t, w_t, t2s, s2t)
        heads[2] = Head(heads[2].hidden, w_copy)
        heads[3] = Head(heads[3].hidden, w_t.clone())
        out, out_sums = fused_sum(
            TermsBlock(_block, n_sums=5, temperature=2.0), heads, y, mask, weights=WEIGHTS, chunk_rows=N
        )
        return out, out_sums, torch.autograd.grad(out, (h_s, w_s, t2s, s2t))

    want_loss, want_sums, want_grads = unshared()
    torch.testing.assert_close(loss, want_loss)
    torch.testing.assert_close(sums, want_sums)
    for got, want in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_block_elements_depend_on_the_device():
    assert fused._block_elements(torch.device("cpu")) == fused.BLOCK_ELEMENTS
    assert fused._block_elements(torch.device("meta")) == fused.ACCELERATOR_BLOCK_ELEMENTS


def assert_same_on_both_paths(run, monkeypatch) -> None:
    """`run()` -> (LossOutput, gradients) with the analytic terms, then with every `TermsBlock` on autograd: the
    loss, the metrics and the gradients agree (the distillers' tests call this)."""
    want, want_grads = run()
    monkeypatch.setattr(fused_terms, "ANALYTIC_DIVERGENCES", frozenset())
    got, grads = run()
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-5, atol=1e-6)
    assert got.metrics == pytest.approx(want.metrics, rel=1e-5, abs=1e-6)
    assert len(grads) == len(want_grads) > 0
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def _skl_block(t: Terms, y: torch.Tensor, mask: torch.Tensor) -> None:
    t.ce(0, head=0, target=y)
    t.divergence(1, q=0, p=1, mask=mask)


def test_the_autograd_path_passes_the_divergences_parameters():
    """A skewed KL at skew_lambda 0.4 (not its default 0.1) equals the dense loss at 0.4."""
    h_s, w_s, h_t, w_t, _, _, y, mask = _inputs()
    w_t = w_t[:V]  # one vocabulary on both sides
    block = TermsBlock(_skl_block, n_sums=2, divergence="skl", temperature=2.0, skew_lambda=0.4)
    assert not block.analytic
    loss, sums = fused_sum(block, [Head(h_s, w_s), Head(h_t, w_t)], y, mask, weights=[0.5, 1.5], chunk_rows=6)
    z_s, z_t = h_s @ w_s.T, h_t @ w_t.T
    kd = torch.where(mask, divergence("skl", z_s, z_t, temperature=2.0, skew_lambda=0.4), 0.0).sum()
    want = torch.stack([F.cross_entropy(z_s, y, ignore_index=-100, reduction="sum"), kd])
    torch.testing.assert_close(sums, want.detach(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(
        kd, torch.where(mask, divergence("skl", z_s, z_t, temperature=2.0), 0.0).sum(), rtol=1e-3
    )  # the parameter matters on these inputs
    torch.testing.assert_close(
        torch.autograd.grad(loss, h_s)[0],
        torch.autograd.grad((want * torch.tensor([0.5, 1.5])).sum(), h_s)[0],
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.mark.parametrize("analytic", [True, False])
def test_a_block_reused_across_steps_uses_each_steps_weights(analytic):
    """The distillers keep one TermsBlock for the whole run while the weights (token counts) change every step."""
    inputs = _inputs()
    h_s, w_s, h_t, w_t, t2s, s2t, y, mask = inputs
    block = TermsBlock(_block, n_sums=5, divergence="fkl", temperature=2.0, analytic=analytic)
    heads = _heads(h_s, w_s, h_t, w_t, t2s, s2t)
    fused_sum(block, heads, y, mask, weights=[1.0, 1.0, 1.0, 1.0, 0.0], chunk_rows=7)
    loss, _ = fused_sum(block, heads, y, mask, weights=WEIGHTS, chunk_rows=7)
    want_loss, _, want_grads = _reference(inputs, 2.0)
    torch.testing.assert_close(loss.double(), want_loss, rtol=1e-5, atol=1e-5)
    for got, want in zip(torch.autograd.grad(loss, (h_s, w_s, t2s, s2t)), want_grads, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def _two_ces_in_one_slot(t: Terms, y: torch.Tensor) -> None:
    t.ce(0, head=0, target=y)
    t.ce(0, head=1, target=y)  # a second term added to the same slot


def test_terms_added_to_one_slot_are_summed_and_the_default_temperature_is_one():
    h_s, w_s, h_t, w_t, _, _, y, mask = _inputs()
    w_t = w_t[:V]
    heads = [Head(h_s, w_s), Head(h_t, w_t)]
    z_s, z_t = h_s @ w_s.T, h_t @ w_t.T
    for analytic in (True, False):
        _, sums = fused_sum(
            TermsBlock(_two_ces_in_one_slot, n_sums=1, analytic=analytic),
            heads,
            y,
            weights=[1.0],
            chunk_rows=6,
        )
        want = F.cross_entropy(z_s, y, reduction="sum") + F.cross_entropy(z_t, y, reduction="sum")
        torch.testing.assert_close(sums[0], want.detach(), rtol=1e-5, atol=1e-4)
        _, sums = fused_sum(
            TermsBlock(_skl_block, n_sums=2, analytic=analytic),
            heads,
            y,
            mask,
            weights=[1.0, 1.0],
            chunk_rows=6,
        )
        kd = torch.where(mask, divergence("fkl", z_s, z_t), 0.0).sum()  # fkl at τ = 1 by default
        torch.testing.assert_close(sums[1], kd.detach(), rtol=1e-5, atol=1e-4)
