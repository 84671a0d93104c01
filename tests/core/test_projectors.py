"""The DSKD projectors: ideal (least-squares) t2s initialisation and the parameter-free s2t map."""

import torch

from dskd_core.projectors import PseudoInverseProjector, ideal_map, ideal_t2s, random_linear

V, D_S, D_T = 64, 32, 48  # V > d on both sides: a real least-squares problem


def _heads(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(V, D_S, generator=g), torch.randn(V, D_T, generator=g)


def _relative_error(approx: torch.Tensor, target: torch.Tensor) -> float:
    return float(torch.linalg.norm(approx - target).detach() / torch.linalg.norm(target))


def test_ideal_t2s_reaches_the_least_squares_optimum_and_random_does_not():
    w_s, w_t = _heads()
    t2s = ideal_t2s(w_t, w_s)
    assert t2s.weight.shape == (D_S, D_T) and t2s.bias is None
    # Basis hidden states (h_t = I) read every column of the map: the error is exactly the head-level residual.
    h_t = torch.eye(D_T)
    ours = _relative_error(t2s(h_t) @ w_s.T, h_t @ w_t.T)
    best_x = torch.linalg.lstsq(w_s.double(), w_t.double()).solution  # min_X ||W_s X − W_t||, independently
    best = _relative_error((w_s.double() @ best_x).T, w_t.double().T)
    assert 0.3 < best < 0.95  # the problem is neither trivial nor hopeless
    assert abs(ours - best) < 1e-4
    # Random hidden states see the same residual up to sampling noise.
    h_rand = torch.randn(4096, D_T, generator=torch.Generator().manual_seed(1))
    assert abs(_relative_error(t2s(h_rand) @ w_s.T, h_rand @ w_t.T) - best) < 0.05
    rand = random_linear(D_T, D_S, "cpu")
    assert _relative_error(rand(h_t) @ w_s.T, h_t @ w_t.T) > 0.9


def test_ideal_map_is_the_transpose_formula_of_the_spec():
    w_s, w_t = _heads(2)
    spec_form = (w_t.T @ torch.linalg.pinv(w_s.T)).T  # W_t2s = (W_t^T · pinv(W_s^T))^T
    torch.testing.assert_close(ideal_map(w_s, w_t), spec_form, atol=1e-4, rtol=1e-4)


def test_pseudo_inverse_s2t_tracks_the_student_head_and_keeps_no_state():
    w_s, w_t = _heads(3)
    s2t = PseudoInverseProjector(w_t)
    assert s2t.state_dict() == {} and list(s2t.parameters()) == []
    p = s2t.matrix(w_s.requires_grad_())
    assert p.shape == (D_S, D_T) and not p.requires_grad
    # P^T solves min_Y ||W_t Y − W_s||: z_s2t = h_s P W_t^T is the best teacher-head reading of h_s W_s^T.
    best = torch.linalg.lstsq(w_t.double(), w_s.detach().double()).solution
    torch.testing.assert_close(p.T.double(), best, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s2t.weight_from(w_s), p.T)
    moved = w_s.detach() + 1.0
    assert not torch.allclose(s2t.matrix(moved), p)
