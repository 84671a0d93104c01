"""Divergences against independent float64 formulas, limits, zeros/extremes, gradients and dtypes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dskd_core.losses import DIVERGENCES, divergence, divergence_params
from dskd_core.spec import Divergence

NAMES = sorted(DIVERGENCES)
INF = float("inf")


# ---- independent references: probabilities in float64, explicit sums -------------------------------------------
def _kl_ref(a: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    return torch.where(a > 0, a * (log_a - log_b), torch.zeros_like(a)).sum(-1)


def _kl_to_mix_ref(a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
    """KL(a ‖ w·a + (1−w)·b); where a > 0 the mixture is ≥ w·a > 0, so the plain log is safe."""
    m = w * a + (1 - w) * b
    safe_m = torch.where(a > 0, m, torch.ones_like(m))
    safe_a = torch.where(a > 0, a, torch.ones_like(a))
    return torch.where(a > 0, a * (safe_a.log() - safe_m.log()), torch.zeros_like(a)).sum(-1)


def reference(
    name: str, student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0, **kw
) -> torch.Tensor:
    zs, zt = student.double() / tau, teacher.double() / tau
    q, p = torch.softmax(zs, -1), torch.softmax(zt, -1)
    log_q, log_p = torch.log_softmax(zs, -1), torch.log_softmax(zt, -1)
    fkl, rkl = _kl_ref(p, log_p, log_q), _kl_ref(q, log_q, log_p)
    if name == "fkl":
        return fkl
    if name == "rkl":
        return rkl
    if name == "js":
        return 0.5 * _kl_to_mix_ref(p, q, 0.5) + 0.5 * _kl_to_mix_ref(q, p, 0.5)
    if name == "gjsd":
        b = kw.get("beta", 0.5)
        return b * _kl_to_mix_ref(p, q, b) + (1 - b) * _kl_to_mix_ref(q, p, 1 - b)
    if name == "skl":
        return _kl_to_mix_ref(p, q, kw.get("skew_lambda", 0.1))
    if name == "srkl":
        return _kl_to_mix_ref(q, p, kw.get("skew_lambda", 0.1))
    if name == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    if name == "akl":
        alpha = kw.get("alpha", 0.5)
        out = torch.empty(p.shape[:-1], dtype=torch.float64).reshape(-1)
        for i, (pi, qi) in enumerate(
            zip(p.reshape(-1, p.shape[-1]), q.reshape(-1, q.shape[-1]), strict=True)
        ):
            order = sorted(range(len(pi)), key=lambda j: float(pi[j]))
            cum, g_head, g_tail = 0.0, 0.0, 0.0
            for j in order:
                cum += float(pi[j])
                if cum <= alpha + 1e-12:  # the last cumulative sum may round to 1 + 1e-16 at α = 1
                    g_tail += abs(float(pi[j] - qi[j]))
                else:
                    g_head += abs(float(pi[j] - qi[j]))
            denom = g_head + g_tail + 1e-8
            out[i] = g_head / denom * fkl.reshape(-1)[i] + g_tail / denom * rkl.reshape(-1)[i]
        return out.reshape(p.shape[:-1])
    raise AssertionError(name)


def _logits(*shape: int, scale: float = 3.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


# ---- registry ---------------------------------------------------------------------------------------------------
def test_registry_matches_spec_enum():
    assert set(DIVERGENCES) == {d.value for d in Divergence}


def test_enum_member_is_accepted_as_name():
    s, t = _logits(2, 7), _logits(2, 7, seed=1)
    torch.testing.assert_close(divergence(Divergence.gjsd, s, t), divergence("gjsd", s, t))


# ---- values against the references ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_matches_reference_on_random_logits(name, tau):
    s, t = _logits(3, 4, 13, seed=1), _logits(3, 4, 13, seed=2)
    got = divergence(name, s, t, temperature=tau)
    assert got.shape == (3, 4) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), reference(name, s, t, tau), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("gjsd", {"beta": 0.2}),
        ("gjsd", {"beta": 0.9}),
        ("skl", {"skew_lambda": 0.4}),
        ("srkl", {"skew_lambda": 0.7}),
    ]
    + [("akl", {"alpha": a}) for a in (0.1, 0.9, 1.0)],
)
def test_matches_reference_with_params(name, params):
    s, t = _logits(5, 17, seed=3), _logits(5, 17, seed=4)
    got = divergence(name, s, t, **params)
    torch.testing.assert_close(got.double(), reference(name, s, t, **params), rtol=1e-5, atol=1e-6)


def test_fkl_matches_torch_kl_div():
    s, t = _logits(6, 29, seed=5), _logits(6, 29, seed=6)
    expected = F.kl_div(
        torch.log_softmax(s / 2, -1), torch.log_softmax(t / 2, -1), log_target=True, reduction="none"
    ).sum(-1)
    torch.testing.assert_close(divergence("fkl", s, t, temperature=2.0), expected)


def test_temperature_divides_both_logit_tensors():
    s, t = _logits(4, 9, seed=7), _logits(4, 9, seed=8)
    for name in NAMES:
        torch.testing.assert_close(divergence(name, s, t, temperature=3.0), divergence(name, s / 3, t / 3))


@pytest.mark.parametrize("name", NAMES)
def test_extreme_logits_are_finite_and_match_reference(name):
    s = _logits(4, 11, scale=1.0, seed=9).sign() * 1e4
    t = _logits(4, 11, scale=1.0, seed=10).sign() * 1e4
    t[0] = s[0]  # one row identical
    s[1, 3] = -1e4 + 1  # ties broken slightly
    got = divergence(name, s, t)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), reference(name, s, t), rtol=1e-5, atol=1e-3)


# ---- exact zeros ------------------------------------------------------------------------------------------------
FINITE_WITH_TARGET_ZEROS = ["fkl", "js", "gjsd", "skl", "srkl", "tvd"]


def _with_teacher_zeros() -> tuple[torch.Tensor, torch.Tensor]:
    s, t = _logits(3, 10, seed=11), _logits(3, 10, seed=12)
    t[:, :4] = -INF
    t[1, 7] = -INF
    return s, t


@pytest.mark.parametrize("name", FINITE_WITH_TARGET_ZEROS)
def test_teacher_minus_inf_columns_give_finite_values_and_gradients(name):
    s, t = _with_teacher_zeros()
    s, t = s.requires_grad_(), t.requires_grad_()
    got = divergence(name, s, t, temperature=2.0)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(
        got.double(), reference(name, s.detach(), t.detach(), 2.0), rtol=1e-5, atol=1e-6
    )
    got.sum().backward()
    assert torch.isfinite(s.grad).all() and torch.isfinite(t.grad).all()


@pytest.mark.parametrize("name", ["rkl", "akl"])
def test_reverse_kl_is_inf_not_nan_where_target_is_zero_under_student_mass(name):
    s, t = _with_teacher_zeros()
    got = divergence(name, s, t)
    assert not torch.isnan(got).any()
    assert torch.isinf(got).all()  # every row has student mass on a zero-probability target column


@pytest.mark.parametrize("name", NAMES)
def test_shared_zero_columns_are_ignored_with_finite_gradients(name):
    s, t = _with_teacher_zeros()
    s[t.isinf()] = -INF
    s[2, 5] = -INF  # a student-only zero
    if name in ("fkl", "akl"):  # q = 0 under p > 0 makes these +inf, truly
        s[2, 5] = 0.0
    s, t = s.requires_grad_(), t.requires_grad_()
    got = divergence(name, s, t)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), reference(name, s.detach(), t.detach()), rtol=1e-5, atol=1e-6)
    got.sum().backward()
    assert torch.isfinite(s.grad).all() and torch.isfinite(t.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_identical_inputs_give_zero(name):
    s = _logits(3, 12, seed=13)
    s[1, :5] = -INF
    s[2] = torch.linspace(-1e4, 1e4, 12)
    x = s.clone().requires_grad_()
    got = divergence(name, x, s)
    torch.testing.assert_close(got, torch.zeros(3), atol=1e-6, rtol=0)
    got.sum().backward()
    assert torch.isfinite(x.grad).all()


# ---- limits -----------------------------------------------------------------------------------------------------
def test_gjsd_scaled_limits_are_fkl_and_rkl():
    s, t = _logits(4, 9, scale=1.0, seed=14).double(), _logits(4, 9, scale=1.0, seed=15).double()
    fkl, rkl = divergence("fkl", s, t), divergence("rkl", s, t)
    errors_low, errors_high = [], []
    for eps in (1e-2, 1e-3, 1e-4):
        errors_low.append((divergence("gjsd", s, t, beta=eps) / eps - fkl).abs().max().item())
        errors_high.append((divergence("gjsd", s, t, beta=1 - eps) / eps - rkl).abs().max().item())
    # The remainder is O(β) (half a χ² divergence): each tenfold step toward the limit shrinks it ~tenfold.
    for errors in (errors_low, errors_high):
        assert errors[-1] < 1e-3 * fkl.max().item() + 1e-6
        assert errors[1] < errors[0] / 5 and errors[2] < errors[1] / 5
    zero = torch.zeros(4, dtype=torch.float64)
    torch.testing.assert_close(divergence("gjsd", s, t, beta=0.0), zero)
    torch.testing.assert_close(divergence("gjsd", s, t, beta=1.0), zero)


def test_skew_and_js_special_cases():
    s, t = _logits(5, 8, seed=16), _logits(5, 8, seed=17)
    torch.testing.assert_close(divergence("skl", s, t, skew_lambda=0.0), divergence("fkl", s, t))
    torch.testing.assert_close(divergence("srkl", s, t, skew_lambda=0.0), divergence("rkl", s, t))
    # Continuity at λ → 0 (float64, moderate logits so that no q is below λ·p).
    sd, td = s.double() / 3, t.double() / 3
    torch.testing.assert_close(divergence("skl", sd, td, skew_lambda=1e-9), divergence("fkl", sd, td))
    torch.testing.assert_close(divergence("srkl", sd, td, skew_lambda=1e-9), divergence("rkl", sd, td))
    torch.testing.assert_close(divergence("skl", s, t, skew_lambda=1.0), torch.zeros(5))
    torch.testing.assert_close(divergence("srkl", s, t, skew_lambda=1.0), torch.zeros(5))
    torch.testing.assert_close(divergence("js", s, t), divergence("gjsd", s, t, beta=0.5))
    # JS is symmetric and bounded by log 2.
    torch.testing.assert_close(divergence("js", s, t), divergence("js", t, s))
    assert (divergence("js", s * 100, t * 100) <= math.log(2) + 1e-6).all()


# ---- gradients --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in NAMES if n != "akl"])
def test_gradcheck_float64(name):
    s = _logits(2, 6, scale=1.5, seed=18).double().requires_grad_()
    t = _logits(2, 6, scale=1.5, seed=19).double().requires_grad_()
    assert divergence(name, s, t).dtype == torch.float64
    params = {"gjsd": {"beta": 0.3}, "skl": {"skew_lambda": 0.2}, "srkl": {"skew_lambda": 0.3}}.get(name, {})
    assert torch.autograd.gradcheck(lambda a, b: divergence(name, a, b, temperature=1.5, **params), (s, t))


def test_akl_gradient_is_the_weighted_sum_of_fkl_and_rkl_gradients():
    # The weights are detached by definition, so a finite-difference gradcheck of AKL itself would (rightly) fail;
    # instead: FKL and RKL are gradchecked above and AKL's gradient must be their weighted sum.
    s = _logits(3, 7, seed=20).double().requires_grad_()
    t = _logits(3, 7, seed=21).double()
    akl, fkl, rkl = (divergence(n, s, t) for n in ("akl", "fkl", "rkl"))
    p, q = torch.softmax(t, -1), torch.softmax(s.detach(), -1)
    order = p.argsort(-1)
    p_sorted, q_sorted = p.gather(-1, order), q.gather(-1, order)
    tail = p_sorted.cumsum(-1) <= 0.5
    gap = (p_sorted - q_sorted).abs()
    g_tail, g_head = (gap * tail).sum(-1), (gap * ~tail).sum(-1)
    w_fkl, w_rkl = g_head / (g_head + g_tail + 1e-8), g_tail / (g_head + g_tail + 1e-8)
    (grad_akl,) = torch.autograd.grad(akl.sum(), s)
    (grad_mix,) = torch.autograd.grad((w_fkl * fkl + w_rkl * rkl).sum(), s)
    torch.testing.assert_close(grad_akl, grad_mix)
    assert (w_fkl > 0).all() and (w_rkl > 0).all()


# ---- dtypes -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_bf16_inputs_are_computed_in_fp32(name):
    s, t = _logits(4, 33, seed=22), _logits(4, 33, seed=23)
    s16, t16 = s.bfloat16(), t.bfloat16()
    got = divergence(name, s16, t16)
    assert got.dtype == torch.float32
    # Exactly the fp32 computation on the bf16 values (no bf16 arithmetic inside) ...
    torch.testing.assert_close(got, divergence(name, s16.float(), t16.float()), rtol=0, atol=0)
    # ... and close to the unrounded fp32 inputs (bf16 keeps ~3 significant digits).
    torch.testing.assert_close(got, divergence(name, s, t), rtol=5e-2, atol=5e-2)


# ---- errors -----------------------------------------------------------------------------------------------------
def test_unknown_name_lists_the_choices():
    s = _logits(2, 5)
    with pytest.raises(ValueError, match="fkl, rkl, js, gjsd, skl, srkl, tvd, akl"):
        divergence("kl", s, s)


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("fkl", {"beta": 0.5}, "valid parameters: none"),
        ("gjsd", {"skew_lambda": 0.1}, "valid parameters: beta"),
        ("gjsd", {"beta": 1.5}, r"beta must be a number in \[0, 1\]"),
        ("skl", {"skew_lambda": -0.1}, "skew_lambda"),
        ("srkl", {"skew_lambda": float("nan")}, "skew_lambda"),
        ("akl", {"alpha": 0.0}, r"alpha must be a number in \(0, 1\]"),
        ("akl", {"alpha": "0.5"}, "alpha"),
    ],
)
def test_bad_parameters_raise(name, params, match):
    s = _logits(2, 5)
    with pytest.raises(ValueError, match=match):
        divergence(name, s, s, **params)


@pytest.mark.parametrize("tau", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_temperature_raises(tau):
    s = _logits(2, 5)
    with pytest.raises(ValueError, match="temperature"):
        divergence("fkl", s, s, temperature=tau)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        divergence("fkl", _logits(2, 5), _logits(2, 6))


def test_divergence_params_reports_defaults():
    assert divergence_params("gjsd") == {"beta": 0.5}
    assert divergence_params("skl") == {"skew_lambda": 0.1}
    assert divergence_params("akl") == {"alpha": 0.5}
    assert divergence_params("tvd") == {}
