"""Chunked sums with recomputation, token-count reduction and the hidden-state KD loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dskd_core.losses import divergence
from dskd_core.reduce import (
    chunked_sum,
    fused_kd_loss_from_hidden,
    gather_valid,
    head_logits,
    kd_loss_from_hidden,
    safe_div,
    valid_mask,
)

V, V_REAL, D_S, D_T = 23, 19, 8, 6


def _setup(b: int = 3, t: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h_s = torch.randn(b, t, D_S, generator=g, dtype=torch.float64).float().requires_grad_()
    w_s = torch.randn(V, D_S, generator=g).requires_grad_()
    h_t = torch.randn(b, t, D_T, generator=g)  # teacher side: no gradient
    w_t = torch.randn(V, D_T, generator=g)
    labels = torch.randint(0, V_REAL, (b, t), generator=g)
    labels[0, :3] = -100
    labels[2, 5:] = -100
    return h_s, w_s, h_t, w_t, labels


def _naive_sums(h_s, w_s, h_t, w_t, labels, name="fkl", tau=2.0):
    """Reference: full logits of all valid positions at once, no chunking, no checkpointing."""
    mask = labels != -100
    z_s = h_s[mask].double() @ w_s[:V_REAL].double().T
    z_t = h_t[mask].double() @ w_t[:V_REAL].double().T
    ce = F.cross_entropy(z_s, labels[mask], reduction="sum")
    kd = divergence(name, z_s, z_t, temperature=tau).sum()
    return torch.stack([ce, kd])


# ---- chunked_sum ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_size", [1, 3, 5, 16, 64])
@pytest.mark.parametrize("name", ["fkl", "akl"])
def test_chunked_equals_unchunked_values_and_gradients(chunk_size, name):
    h_s, w_s, h_t, w_t, labels = _setup()
    sums = kd_loss_from_hidden(
        h_s,
        w_s,
        labels,
        h_t,
        w_t,
        divergence_name=name,
        temperature=2.0,
        vocab_limit=V_REAL,
        chunk_size=chunk_size,
    )
    assert (
        sums[2].item() == (labels != -100).sum().item() == 16
    )  # 16 valid positions: chunk sizes 3 and 5 leave a rest
    weights = torch.tensor([0.3, 0.7, 0.0])
    grads = torch.autograd.grad((sums * weights).sum(), (h_s, w_s))

    h_s2, w_s2 = h_s.detach().clone().requires_grad_(), w_s.detach().clone().requires_grad_()
    ref = _naive_sums(h_s2, w_s2, h_t, w_t, labels, name)
    ref_grads = torch.autograd.grad((ref * weights[:2].double()).sum(), (h_s2, w_s2))
    torch.testing.assert_close(sums[:2].double(), ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-5, atol=1e-6)


def test_chunk_function_is_recomputed_in_backward_and_teacher_needs_no_grad():
    calls = []
    w = torch.randn(5, 4, requires_grad=True)

    def fn(x, y):
        calls.append(x.shape[0])
        assert not y.requires_grad
        return torch.stack([((x @ w.T) * y).sum(), torch.tensor(float(x.shape[0]))])

    x = torch.randn(10, 4, requires_grad=True)
    y = torch.randn(10, 5)
    out = chunked_sum(fn, x, y, chunk_size=4)
    assert calls == [4, 4, 2]
    out[0].backward()
    assert calls == [4, 4, 2, 2, 4, 4]  # backward walks the chunks in reverse, recomputing each
    torch.testing.assert_close(out, torch.stack([((x @ w.T) * y).sum(), torch.tensor(10.0)]))
    torch.testing.assert_close(w.grad, y.T @ x.detach())
    torch.testing.assert_close(x.grad, y @ w.detach())


def test_no_grad_mode_skips_checkpointing():
    calls = []

    def fn(x):
        calls.append(1)
        return x.sum(0)

    with torch.no_grad():
        out = chunked_sum(fn, torch.ones(7, 2), chunk_size=3)
    torch.testing.assert_close(out, torch.tensor([7.0, 7.0]))
    assert len(calls) == 3


def test_empty_input_gives_connected_zeros():
    w = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(0, 3)
    out = chunked_sum(
        lambda xc: torch.stack([torch.log_softmax(xc @ w.T, -1).sum(), xc.new_tensor(0.0)]), x, chunk_size=8
    )
    assert out.shape == (2,) and torch.equal(out.detach(), torch.zeros(2))
    out.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w))


def test_chunked_sum_validates_arguments():
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_sum(lambda x: x.sum(0), torch.ones(3, 2), chunk_size=0)
    with pytest.raises(ValueError, match="dim 0"):
        chunked_sum(lambda x, y: x.sum(0), torch.ones(3, 2), torch.ones(4, 2), chunk_size=2)
    with pytest.raises(ValueError, match="1-D"):
        chunked_sum(lambda x: x.sum(), torch.ones(3, 2), chunk_size=2)


# ---- reduction helpers ------------------------------------------------------------------------------------------
def test_valid_mask_and_gather_valid_keep_row_major_order():
    labels = torch.tensor([[-100, 4, 5], [6, -100, 7]])
    mask = valid_mask(labels)
    assert mask.tolist() == [[False, True, True], [True, False, True]]
    assert valid_mask(labels, ignore_index=4).sum() == 5
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    expected = [hidden[b, t].tolist() for b in range(2) for t in range(3) if mask[b, t]]
    assert gather_valid(hidden, mask).tolist() == expected
    with pytest.raises(ValueError, match="does not match"):
        gather_valid(hidden, mask[:, :2])


def test_safe_div():
    total = torch.tensor(6.0, requires_grad=True)
    assert safe_div(total, 3).item() == 2.0
    assert safe_div(total, torch.tensor(4)).item() == 1.5
    for zero in (0, 0.0, torch.tensor(0.0)):
        out = safe_div(total, zero)
        assert out.item() == 0.0
        (grad,) = torch.autograd.grad(out, total)
        assert torch.isfinite(grad) and grad.item() == 0.0


def test_all_masked_batch_gives_zero_loss_and_finite_gradients():
    h_s, w_s, h_t, w_t, labels = _setup()
    labels[:] = -100
    for name in ("fkl", "akl", "js"):
        sums = kd_loss_from_hidden(
            h_s, w_s, labels, h_t, w_t, divergence_name=name, vocab_limit=V_REAL, chunk_size=4
        )
        loss = 0.5 * safe_div(sums[0], sums[2]) + 0.5 * safe_div(sums[1], sums[2])
        assert loss.item() == 0.0
        g_h, g_w = torch.autograd.grad(loss, (h_s, w_s))
        assert torch.isfinite(g_h).all() and torch.isfinite(g_w).all()
        assert g_h.abs().sum() == 0 and g_w.abs().sum() == 0


def test_micro_batches_with_global_token_count_match_one_batch():
    h_s, w_s, h_t, w_t, labels = _setup(b=4, t=6, seed=1)
    labels[1, :] = -100  # uneven valid counts across the two micro-batches
    labels[0, 1:] = -100
    n_total = (labels != -100).sum().item()

    def step_loss(sl: slice) -> torch.Tensor:
        sums = kd_loss_from_hidden(h_s[sl], w_s, labels[sl], h_t[sl], w_t, vocab_limit=V_REAL, chunk_size=3)
        return 0.5 * safe_div(sums[0], n_total) + 0.5 * safe_div(sums[1], n_total)

    full = step_loss(slice(0, 4))
    full_grads = torch.autograd.grad(full, (h_s, w_s))
    parts = [step_loss(slice(0, 2)), step_loss(slice(2, 4))]
    acc_grads = [torch.zeros_like(h_s), torch.zeros_like(w_s)]
    for part in parts:
        for acc, g in zip(acc_grads, torch.autograd.grad(part, (h_s, w_s)), strict=True):
            acc += g
    torch.testing.assert_close(sum(parts), full)
    for got, want in zip(acc_grads, full_grads, strict=True):
        torch.testing.assert_close(got, want)
    # The test can fail: averaging each micro-batch by its own count gives a different loss here.
    counts = [(labels[:2] != -100).sum().item(), (labels[2:] != -100).sum().item()]
    mean_of_means = sum(p * n_total / c for p, c in zip(parts, counts, strict=True)) / 2
    assert not torch.allclose(mean_of_means, full)


# ---- kd_loss_from_hidden specifics ------------------------------------------------------------------------------
def test_padding_columns_past_vocab_limit_are_ignored():
    h_s, w_s, h_t, w_t, labels = _setup()
    base = kd_loss_from_hidden(h_s, w_s, labels, h_t, w_t, vocab_limit=V_REAL, chunk_size=4)
    w_s2, w_t2 = w_s.detach().clone(), w_t.clone()
    w_s2[V_REAL:] = 50.0
    w_t2[V_REAL:] = -50.0
    torch.testing.assert_close(
        kd_loss_from_hidden(h_s, w_s2, labels, h_t, w_t2, vocab_limit=V_REAL, chunk_size=4), base
    )
    assert not torch.allclose(kd_loss_from_hidden(h_s, w_s2, labels, h_t, w_t2, chunk_size=4), base)
    with pytest.raises(ValueError, match="vocab_limit"):
        kd_loss_from_hidden(h_s, w_s, labels.clamp(max=V - 1) * 0 + V - 1, h_t, w_t, vocab_limit=V_REAL)


def test_student_only_gives_ce_and_zero_kd():
    h_s, w_s, _, _, labels = _setup()
    sums = kd_loss_from_hidden(h_s, w_s, labels, chunk_size=4)
    mask = labels != -100
    torch.testing.assert_close(sums[0], F.cross_entropy(h_s[mask] @ w_s.T, labels[mask], reduction="sum"))
    assert sums[1].item() == 0.0


def test_bf16_hidden_states_give_fp32_logits():
    h = torch.randn(3, 4).bfloat16()
    w = torch.randn(5, 4).bfloat16()
    z = head_logits(h, w, 3)
    assert z.dtype == torch.float32 and z.shape == (3, 3)
    torch.testing.assert_close(z, h.float() @ w[:3].float().T)


@pytest.mark.slow  # a fresh process per variant: about a minute
def test_bench_quick_mode_runs(tmp_path):
    from bench.loss_memory import VARIANTS, main

    rows = main(["--quick", "--before", "--log", str(tmp_path / "log.jsonl")])
    assert [r["variant"] for r in rows] == [*VARIANTS, "before"]
    assert all(r["peak_bytes"] > 0 and r["seconds"] > 0 for r in rows)
    dense = rows[0]
    assert dense["peak_ratio"] == 1.0
    for r in rows[1:]:
        assert r["peak_ratio"] == r["peak_bytes"] / dense["peak_bytes"]
    # the same loss, computed three ways
    assert {round(r["loss"], 4) for r in rows if r["variant"] in ("dense", "vanilla_kd", "before")} == {
        round(dense["loss"], 4)
    }
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == len(rows)


@pytest.mark.parametrize(("name", "chunk_size"), [("fkl", 3), ("akl", 5), ("js", 64)])
def test_fused_loss_matches_weighted_chunked_sums(name, chunk_size):
    h_s, w_s, h_t, w_t, labels = _setup()
    kw = {"divergence_name": name, "temperature": 2.0, "vocab_limit": V_REAL, "chunk_size": chunk_size}
    sums = kd_loss_from_hidden(h_s, w_s, labels, h_t, w_t, **kw)
    want = 0.25 * sums[0] + 0.75 * sums[1]
    want_grads = torch.autograd.grad(3.0 * want, (h_s, w_s))
    got = fused_kd_loss_from_hidden(h_s, w_s, labels, h_t, w_t, ce_weight=0.25, kd_weight=0.75, **kw)
    got_grads = torch.autograd.grad(3.0 * got, (h_s, w_s))  # the upstream gradient scales the stored one
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w)
    labels[:] = -100
    empty = fused_kd_loss_from_hidden(h_s, w_s, labels, h_t, w_t, ce_weight=0.25, kd_weight=0.75, **kw)
    assert empty.item() == 0.0
    assert all(torch.equal(g, torch.zeros_like(g)) for g in torch.autograd.grad(empty, (h_s, w_s)))


def test_fused_loss_under_no_grad_gives_the_value_only():
    h_s, w_s, h_t, w_t, labels = _setup()
    kw = {"ce_weight": 0.5, "kd_weight": 0.5, "vocab_limit": V_REAL, "chunk_size": 4}
    want = fused_kd_loss_from_hidden(h_s, w_s, labels, h_t, w_t, **kw)
    with torch.no_grad():
        got = fused_kd_loss_from_hidden(h_s, w_s, labels, h_t, w_t, **kw)
    assert not got.requires_grad
    torch.testing.assert_close(got, want.detach())
