"""Cross-vocabulary distillers (dskd_cma, dskd_eta, shared_vocab_kd, uld, mined) on the toy world's GPT-2-style
teacher (byte-level BPE) and Llama-style cross student (SentencePiece-style), checked against hand-computed
cases and independent full-logit references."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from dskd_core import fused, models
from dskd_core.distillers import DistillContext, TokenCounts, get_distiller_class
from dskd_core.distillers.cross import in_order_index, shared_pairs
from dskd_core.distillers.dskd_cma import CMAConfig, cma_sums
from dskd_core.distillers.mined import UNMAPPED_LOGIT, remap_teacher_logits
from dskd_core.distillers.uld import sorted_l1
from dskd_core.spec import CROSS_VOCAB_METHODS, Divergence, JobSpec
from tests.core.test_fused_terms import assert_same_on_both_paths

CROSS = list(CROSS_VOCAB_METHODS)


def make_spec(world, method: str, **distill) -> JobSpec:
    return JobSpec.model_validate(
        {
            "student": {"name_or_path": str(world.cross_student)},
            "teacher": {"name_or_path": str(world.teacher)},
            "data": {"path": str(world.train), "max_examples": 6},
            "distill": {"method": method, "loss_chunk_size": 16, **distill},
            "training": {"max_steps": 1, "batch_size": 6, "max_length": 64, "max_prompt_length": 32},
        }
    )


@pytest.fixture(autouse=True)
def _seeded() -> None:
    # Random projectors and samples come from the global generator: seeded per test, each test sees the same
    # numbers in any order (mutation runs and pytest-randomly reorder tests).
    torch.manual_seed(3)


@pytest.fixture(scope="module")
def pair(toy_world):
    from dskd_core.data.build import build_datasets

    spec = make_spec(toy_world, "dskd_eta")
    student_tok, teacher_tok = models.load_tokenizer(spec.student), models.load_tokenizer(spec.teacher)
    torch.manual_seed(0)
    student = models.load_model(spec.student, trainable=True).eval()  # eval: no dropout, repeatable
    teacher = models.load_model(spec.teacher, trainable=False)
    data = build_datasets(spec, student_tok, teacher_tok, dual=True)
    batch = data.collator([data.train[i] for i in range(len(data.train))])
    return {
        "world": toy_world,
        "student": student,
        "teacher": teacher,
        "s_tok": student_tok,
        "t_tok": teacher_tok,
        "batch": batch,
    }


def tokens_of(batch) -> TokenCounts:
    return TokenCounts(
        student=float((batch["labels"] != -100).sum()), teacher=float((batch["teacher_labels"] != -100).sum())
    )


def make(pair, method, student=None, **distill):
    ctx = DistillContext(
        make_spec(pair["world"], method, **distill),
        student or pair["student"],
        pair["teacher"],
        pair["s_tok"],
        pair["t_tok"],
    )
    torch.manual_seed(1)
    return get_distiller_class(method)(ctx)


def hidden(pair, student=None):
    b = pair["batch"]
    h_s = models.last_hidden_state(student or pair["student"], b["input_ids"], b["attention_mask"])
    with torch.no_grad():
        h_t = models.last_hidden_state(pair["teacher"], b["teacher_input_ids"], b["teacher_attention_mask"])
    return h_s, h_t


def full_logits(pair):
    """Both models' logits from their own forward pass, cut to the real vocabularies."""
    b = pair["batch"]
    s = pair["student"](b["input_ids"], attention_mask=b["attention_mask"]).logits[..., : len(pair["s_tok"])]
    with torch.no_grad():
        t = pair["teacher"](b["teacher_input_ids"], attention_mask=b["teacher_attention_mask"]).logits
    return s.float(), t[..., : len(pair["t_tok"])].float()


def pairs_of(index, batch):
    """[(b, j, i)] for valid student positions j whose index points to a valid teacher position i (plain loops)."""
    out = []
    for b in range(index.shape[0]):
        for j in range(index.shape[1]):
            i = int(index[b, j])
            if batch["labels"][b, j] != -100 and i >= 0 and batch["teacher_labels"][b, i] != -100:
                out.append((b, j, i))
    return out


def fkl(q_logits, p_logits, tau=1.0):
    log_q, log_p = F.log_softmax(q_logits / tau, -1), F.log_softmax(p_logits / tau, -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


# ---- the batch itself --------------------------------------------------------------------------------------


def test_the_batch_has_prompt_padding_and_alignments(pair):
    b = pair["batch"]
    assert (b["attention_mask"] == 0).any() and (
        b["teacher_attention_mask"] == 0
    ).any()  # padding on both sides
    assert ((b["labels"] == -100) & (b["attention_mask"] == 1)).any()  # prompt positions
    assert (b["eta_teacher_index"] >= 0).sum() > 10 and (b["mined_teacher_index"] >= 0).sum() > 10


# ---- hand-computed cases ------------------------------------------------------------------------------------


def test_uld_hand_case():
    student = torch.log(torch.tensor([[2.0, 1.0, 1.0]]))  # probabilities 1/2, 1/4, 1/4
    teacher = torch.log(torch.tensor([[1.0, 4.0]]))  # 1/5, 4/5; sorted 4/5, 1/5, then a zero pad
    assert sorted_l1(student, teacher, 1.0).item() == pytest.approx(0.3 + 0.05 + 0.25)
    # τ = 2 takes square roots of the odds: student ∝ (√2, 1, 1), teacher ∝ (1, 2).
    s = torch.tensor([math.sqrt(2), 1, 1]) / (2 + math.sqrt(2))
    expected = abs(s[0] - 2 / 3) + abs(s[1] - 1 / 3) + abs(s[2] - 0)
    assert sorted_l1(student, teacher, 2.0).item() == pytest.approx(float(expected))


def test_in_order_pairing_hand_case():
    s_labels = torch.tensor([[-100, 5, 6, 7, -100], [-100, -100, 1, 2, 3]])
    t_labels = torch.tensor([[-100, -100, 9, 9, -100], [8, 8, 8, 8, -100]])
    expected = torch.tensor([[-1, 2, 3, -1, -1], [-1, -1, 0, 1, 2]])  # row 0: only two teacher positions
    assert torch.equal(in_order_index(s_labels, t_labels), expected)


def test_mined_remap_hand_case():
    vocab_map = torch.tensor(
        [1, -1, 0, 1]
    )  # teacher 0 and 3 both map to student 1: the lowest id (0) is kept
    t_ids, s_ids = shared_pairs(vocab_map)
    assert t_ids.tolist() == [2, 0] and s_ids.tolist() == [0, 1]
    teacher_logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    remapped = remap_teacher_logits(teacher_logits, t_ids, s_ids, 3)
    assert remapped.tolist() == [[3.0, 1.0, UNMAPPED_LOGIT]]


def test_mined_loss_hand_case(pair):
    """One aligned and one unaligned position on a replaced 3-token world, against numbers written out by hand."""
    distiller = make(pair, "mined", kd_rate=0.5, temperature=1.0)
    distiller.vocab_size, distiller.teacher_vocab = 3, 2
    distiller.shared_teacher_ids, distiller.shared_student_ids = torch.tensor([0]), torch.tensor([2])
    w_s = torch.eye(3)  # student logits = the hidden state itself
    w_t = torch.eye(2)
    head_s, head_t = models.output_head(pair["student"]), models.output_head(distiller.teacher)
    saved = head_s.weight.data, head_t.weight.data
    try:
        head_s.weight.data, head_t.weight.data = w_s, w_t
        h_s = torch.log(
            torch.tensor([[[1.0, 1.0, 2.0], [1.0, 2.0, 1.0]]])
        )  # q = (1/4,1/4,1/2), (1/4,1/2,1/4)
        h_t = torch.tensor([[[0.0, 5.0]]])  # teacher token 0 → student 2; teacher token 1 unmapped
        batch = {
            "labels": torch.tensor([[2, 1]]),
            "teacher_labels": torch.tensor([[0]]),
            "mined_teacher_index": torch.tensor([[0, -1]]),
        }
        out = distiller.loss_from_hidden(batch, h_s, h_t, TokenCounts(student=2.0, teacher=1.0))
    finally:
        head_s.weight.data, head_t.weight.data = saved
    # Position 0: the remapped target is one-hot on student 2 (the others at −1e4): FKL = −log q(2) = log 2.
    # Position 1: no alignment, one-hot on gold 1: −log q(1) = log 2. CE = log 2 + log 2.
    ce, kd = 2 * math.log(2), 2 * math.log(2)
    assert out.loss.item() == pytest.approx((0.5 * ce + 0.5 * kd) / 2, rel=1e-5)
    assert out.metrics["align_ratio"] == pytest.approx(0.5)
    # Both student top-1s are the gold tokens; at the aligned position it is also the remapped teacher's top-1
    # (student 2); the unaligned position does not count for agreement.
    assert out.metrics["acc"] == pytest.approx(1.0)
    assert out.metrics["teacher_agreement"] == pytest.approx(0.5)


# ---- independent references on the toy batch ---------------------------------------------------------------


def test_uld_matches_a_loop_reference(pair):
    distiller = make(pair, "uld", kd_rate=0.3, temperature=2.0)
    b = pair["batch"]
    out = distiller(b, tokens_of(b))
    s_logits, t_logits = full_logits(pair)
    ce = F.cross_entropy(s_logits[b["labels"] != -100], b["labels"][b["labels"] != -100], reduction="sum")
    uld = 0.0
    for row in range(b["labels"].shape[0]):
        s_pos = (b["labels"][row] != -100).nonzero().flatten().tolist()
        t_pos = (b["teacher_labels"][row] != -100).nonzero().flatten().tolist()
        for j, i in zip(s_pos, t_pos, strict=False):  # k-th with k-th, up to the shorter
            q = sorted(torch.softmax(s_logits[row, j] / 2.0, -1).tolist(), reverse=True)
            p = sorted(torch.softmax(t_logits[row, i] / 2.0, -1).tolist(), reverse=True)
            width = max(len(q), len(p))
            q, p = q + [0.0] * (width - len(q)), p + [0.0] * (width - len(p))
            uld += sum(abs(a - c) for a, c in zip(q, p, strict=True))
    n = float((b["labels"] != -100).sum())
    assert out.loss.item() == pytest.approx((0.7 * ce.item() + 0.3 * uld) / n, rel=1e-4)


def test_mined_and_shared_vocab_match_references(pair):
    b = pair["batch"]
    s_logits, t_logits = full_logits(pair)
    vocab_map = pair_vocab_map(pair)
    inverse = {}  # student id → lowest teacher id, built by a plain loop
    for t_id, s_id in enumerate(vocab_map.tolist()):
        if s_id >= 0 and s_id not in inverse:
            inverse[s_id] = t_id
    cols_s = sorted(inverse)
    cols_t = [inverse[s] for s in cols_s]
    valid = b["labels"] != -100
    n = float(valid.sum())
    ce = F.cross_entropy(s_logits[valid], b["labels"][valid], reduction="sum").item()

    mined = make(pair, "mined", kd_rate=0.5, temperature=1.5)
    kd = 0.0
    aligned = {(r, j): i for r, j, i in pairs_of(b["mined_teacher_index"], b)}
    for r, j in valid.nonzero().tolist():
        if (r, j) in aligned:
            target = torch.full((len(pair["s_tok"]),), -1.0e4)
            target[cols_s] = t_logits[r, aligned[(r, j)], cols_t]
            kd += fkl(s_logits[r, j], target, 1.5).item()
        else:
            kd += -F.log_softmax(s_logits[r, j] / 1.5, -1)[b["labels"][r, j]].item()
    assert mined(b, tokens_of(b)).loss.item() == pytest.approx((0.5 * ce + 0.5 * kd) / n, rel=1e-4)

    shared = make(pair, "shared_vocab_kd", kd_rate=0.5, temperature=1.0, divergence="rkl")
    kd = 0.0
    for r, j, i in pairs_of(b["eta_teacher_index"], b):
        kd += fkl(t_logits[r, i, cols_t], s_logits[r, j, cols_s]).item()  # RKL = KL(q ‖ p)
    assert shared(b, tokens_of(b)).loss.item() == pytest.approx((0.5 * ce + 0.5 * kd) / n, rel=1e-4)


def pair_vocab_map(pair):
    from dskd_core.alignment import build_vocab_map

    return build_vocab_map(pair["t_tok"], pair["s_tok"])[: len(pair["t_tok"])]


def eta_reference(pair, distiller, *, detach_head=True):
    """DSKD-ETA v2 terms from full logits and explicit loops over the aligned pairs (random projectors)."""
    b = pair["batch"]
    s_logits, t_logits = full_logits(pair)
    h_s, h_t = hidden(pair)
    w_s = models.output_head(pair["student"]).weight[: len(pair["s_tok"])]
    w_t = models.output_head(pair["teacher"]).weight[: len(pair["t_tok"])]
    vocab_map = pair_vocab_map(pair)
    terms = dict.fromkeys(("ce_t2s", "kd_stu", "kd_tea"), torch.zeros(()))
    mapped = 0
    for r, j, i in pairs_of(b["eta_teacher_index"], b):
        label = int(vocab_map[int(t_logits[r, i].argmax())])
        z_t2s = distiller.t2s(h_t[r, i]) @ (w_s.detach() if detach_head else w_s).T
        if label >= 0:
            mapped += 1
            terms["ce_t2s"] = terms["ce_t2s"] - F.log_softmax(z_t2s, -1)[label]
            if int(z_t2s.argmax()) == label:
                terms["kd_stu"] = terms["kd_stu"] + fkl(s_logits[r, j], z_t2s.detach())
        z_s2t = distiller.s2t(h_s[r, j]) @ w_t.T
        terms["kd_tea"] = terms["kd_tea"] + fkl(z_s2t, t_logits[r, i])
    valid = b["labels"] != -100
    terms["ce"] = F.cross_entropy(s_logits[valid], b["labels"][valid], reduction="sum")
    return terms, mapped


def test_dskd_eta_matches_reference_and_routes_gradients(pair):
    student = pair["student"]
    distiller = make(pair, "dskd_eta", projector_init="random", kd_rate=0.5, temperature=1.0)
    b, tokens = pair["batch"], tokens_of(pair["batch"])
    out = distiller(b, tokens)
    terms, mapped = eta_reference(pair, distiller)
    n = tokens.student
    ref_loss = (0.5 * terms["ce"] + 0.5 * (terms["ce_t2s"] + terms["kd_stu"] + terms["kd_tea"])) / n
    assert out.loss.item() == pytest.approx(ref_loss.item(), rel=1e-4)
    assert out.metrics["mapped_label_ratio"] == pytest.approx(mapped / n)
    params = [*student.parameters(), *distiller.parameters()]
    got = torch.autograd.grad(out.loss, params, allow_unused=True)
    want = torch.autograd.grad(ref_loss, params, allow_unused=True, retain_graph=True)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-6)
    assert all(p.grad is None for p in pair["teacher"].parameters())
    # P_t2s learns from L_ce_t2s alone (L_kd_stu reads a detached target) ...
    (g_t2s,) = torch.autograd.grad(0.5 * terms["ce_t2s"] / n, [distiller.t2s.weight])
    torch.testing.assert_close(got[len(list(student.parameters()))], g_t2s, rtol=1e-3, atol=1e-7)
    # ... and the check can fail: through an attached head, z_t2s would push gradient into the student head.
    leaky, _ = eta_reference(pair, distiller, detach_head=False)
    head = models.output_head(student).weight
    (leak,) = torch.autograd.grad(leaky["ce_t2s"], [head])
    assert leak.abs().sum() > 0


def test_dskd_eta_never_uses_unmapped_labels(pair):
    b = pair["batch"]
    distiller = make(pair, "dskd_eta", projector_init="random")
    _, t_logits = full_logits(pair)
    tops = {int(t_logits[r, i].argmax()) for r, _, i in pairs_of(b["eta_teacher_index"], b)}
    distiller.vocab_map[list(tops)] = -1  # every teacher top-1 at an aligned position now has no counterpart
    out = distiller(b, tokens_of(b))
    assert out.metrics["mapped_label_ratio"] == 0.0 and out.metrics["ce_t2s"] == 0.0
    assert out.metrics["agreement"] == 0.0 and out.metrics["kd_student_space"] == 0.0


def test_dskd_eta_ideal_init_fits_the_shared_rows(pair):
    distiller = make(pair, "dskd_eta", projector_init="ideal")
    t_ids, s_ids = shared_pairs(distiller.vocab_map)
    w_s = models.output_head(pair["student"]).weight[s_ids].detach()
    w_t = models.output_head(pair["teacher"]).weight[t_ids].detach()
    x = distiller.t2s.weight.T  # [d_t, d_s]: W_s[S] ≈ ... least squares W_s[S] · X^T ≈ W_t[T]
    residual = w_s @ x.T - w_t
    grad = w_s.T @ residual  # normal equations: zero at the least-squares solution
    assert grad.abs().max() < 1e-3 * w_s.abs().max() * w_t.abs().max() * len(s_ids)
    # The exported s2t (Linear layout [d_t, d_s]) is the map the loss uses (rebuilt from the student's head).
    exported = distiller.export_state()["s2t.weight"]
    h = torch.randn(5, w_s.shape[1])
    torch.testing.assert_close(h @ exported.T, distiller._s2t_map()(h))


@pytest.mark.parametrize(
    "extra", [{}, {"dskd_variant": "v1", "projector_init": "random", "temperature": 2.0}]
)
def test_dskd_eta_analytic_terms_give_the_autograd_terms_loss_and_gradients(pair, monkeypatch, extra):
    """Forward KL runs `fused_terms`' hand-written gradient; the same terms through autograd agree with it."""
    student = copy.deepcopy(pair["student"])

    def run():
        d = make(pair, "dskd_eta", student=student, **extra)
        student.zero_grad()
        out = d(pair["batch"], tokens_of(pair["batch"]))
        out.loss.backward()
        params = list(student.parameters()) + list(d.parameters())
        return out, [p.grad.clone() for p in params if p.grad is not None]

    assert_same_on_both_paths(run, monkeypatch)


# ---- CMA ---------------------------------------------------------------------------------------------------


def _with_block(distiller, block):
    distiller.spec = distiller.spec.model_copy(
        update={"distill": distiller.spec.distill.model_copy(update={"cma_block_size": block})}
    )
    return distiller


@pytest.mark.parametrize("method", ["uld", "mined", "shared_vocab_kd", "dskd_eta"])
def test_chunks_and_blocks_give_the_one_chunk_loss_and_gradients(pair, monkeypatch, method):
    """Chunks of 16 rows split into one-row blocks vs the default element budget (one chunk at this size)."""
    student = copy.deepcopy(pair["student"])

    def run(**distill):
        d = make(pair, method, student=student, **distill)
        student.zero_grad()
        out = d(pair["batch"], tokens_of(pair["batch"]))
        out.loss.backward()
        params = list(student.parameters()) + list(d.parameters())
        return out, [p.grad.clone() for p in params if p.grad is not None]

    want, want_grads = run(loss_chunk_size=None)
    monkeypatch.setattr(fused, "BLOCK_ELEMENTS", 1)
    got, grads = run()
    assert (pair["batch"]["labels"] != -100).sum() > 16  # several chunks
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-5, atol=1e-6)
    assert got.metrics == pytest.approx(want.metrics, rel=1e-5, abs=1e-6)
    assert len(grads) == len(want_grads) > 0
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_cma_blockwise_equals_unblocked(pair):
    distiller = make(pair, "dskd_cma", divergence="js")
    b, tokens = pair["batch"], tokens_of(pair["batch"])
    params = [p for p in [*pair["student"].parameters(), *distiller.parameters()] if p.requires_grad]
    results = []
    for block in (3, 7, 100_000):
        out = _with_block(distiller, block)(b, tokens)
        results.append((out.loss, torch.autograd.grad(out.loss, params), out.metrics))
    for loss, grads, metrics in results[:-1]:
        torch.testing.assert_close(loss, results[-1][0], rtol=1e-5, atol=1e-6)
        # atol 1e-6 as for the loss: blocks sum in another order, and a pretrained student's gradients are not
        # all far above float32 rounding (one element of 51,200 differed by 1.5e-7 with the toy world v4).
        for g, w in zip(grads, results[-1][1], strict=True):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
        assert metrics["attention_entropy"] == pytest.approx(results[-1][2]["attention_entropy"], rel=1e-5)


def test_cma_loss_weighs_its_terms(pair):
    b = pair["batch"]
    rate = 0.3
    out = make(pair, "dskd_cma", kd_rate=rate)(b, tokens_of(b))
    m = out.metrics
    assert m["ce_t2s"] > 0  # every term counts: a sign error in any of them changes the loss
    kd = m["kd_student_space"] + m["ce_t2s"] + m["kd_teacher_space"]
    assert out.loss.item() == pytest.approx((1 - rate) * m["ce"] + rate * kd, rel=1e-5)
    assert m["loss"] == pytest.approx(out.loss.item(), rel=1e-5)


def test_a_student_head_smaller_than_its_tokenizer_is_refused(pair):
    small = copy.deepcopy(pair["student"])
    head = models.output_head(small)
    head.weight = torch.nn.Parameter(head.weight.detach()[: len(pair["s_tok"]) - 1].clone())
    with pytest.raises(ValueError, match=r"an output head has \d+ rows but the tokenizer has"):
        make(pair, "uld", student=small)


def test_cma_gradient_routing(pair):
    distiller = make(pair, "dskd_cma", kd_rate=1.0)
    b = pair["batch"]
    h_s, h_t = hidden(pair)
    rows = distiller.rows(b, h_s, h_t)
    w_s = models.output_head(pair["student"]).weight[: len(pair["s_tok"])]
    w_t = models.output_head(pair["teacher"]).weight[: len(pair["t_tok"])]
    sums = cma_sums(rows, w_s, w_t, CMAConfig(4, "fkl", {}, 2.0, 1.0))
    ce_t2s, kd_tea = sums[2], sums[6]
    # The t2s CE reaches P_t2s and P_query, never the student head (it reads a detached one) nor P_s2t.
    g = torch.autograd.grad(
        ce_t2s,
        [distiller.t2s.weight, distiller.query.weight, w_s, distiller.s2t.weight],
        allow_unused=True,
        retain_graph=True,
    )
    assert g[0].abs().sum() > 0 and g[1].abs().sum() > 0
    assert all(x is None or x.abs().sum() == 0 for x in g[2:])
    # The teacher-space term trains P_s2t and P_query, not P_t2s.
    g = torch.autograd.grad(
        kd_tea, [distiller.s2t.weight, distiller.query.weight, distiller.t2s.weight], allow_unused=True
    )
    assert g[0].abs().sum() > 0 and g[1].abs().sum() > 0
    assert g[2] is None or g[2].abs().sum() == 0
    out = distiller(b, tokens_of(b))
    out.loss.backward()
    assert all(p.grad is None for p in pair["teacher"].parameters())
    pair["student"].zero_grad(set_to_none=True)


def test_cma_scores_are_masked_to_the_response_of_the_same_example(pair):
    """Softmax weights outside the own example's response rows are exactly zero."""
    distiller = make(pair, "dskd_cma")
    h_s, h_t = hidden(pair)
    rows = distiller.rows(pair["batch"], h_s, h_t)
    assert rows.q.shape[0] == int((pair["batch"]["labels"] != -100).sum())
    assert rows.k.shape[0] == int((pair["batch"]["teacher_labels"] != -100).sum())


# ---- masks, divergences, training --------------------------------------------------------------------------


@pytest.mark.parametrize("method", CROSS)
def test_prompt_and_padding_do_not_change_the_loss(pair, method):
    distiller = make(pair, method)
    b, tokens = pair["batch"], tokens_of(pair["batch"])
    with torch.no_grad():
        h_s, h_t = hidden(pair)
        base = distiller.loss_from_hidden(b, h_s, h_t, tokens).loss
        g = torch.Generator().manual_seed(3)
        s_out, t_out = (b["labels"] == -100), (b["teacher_labels"] == -100)
        noisy_s = torch.where(s_out[..., None], 10 * torch.randn(h_s.shape, generator=g), h_s)
        noisy_t = torch.where(t_out[..., None], 10 * torch.randn(h_t.shape, generator=g), h_t)
        changed = dict(b)
        for key, mask, vocab in (
            ("input_ids", b["attention_mask"] == 0, len(pair["s_tok"])),
            ("teacher_input_ids", b["teacher_attention_mask"] == 0, len(pair["t_tok"])),
        ):
            changed[key] = torch.where(mask, torch.randint(0, vocab, mask.shape, generator=g), b[key])
        perturbed = distiller.loss_from_hidden(changed, noisy_s, noisy_t, tokens).loss
    torch.testing.assert_close(perturbed, base, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", [d.value for d in Divergence])
@pytest.mark.parametrize("method", ["dskd_cma", "dskd_eta"])
def test_every_divergence_works(pair, method, name):
    distiller = make(pair, method, divergence=name, projector_init="random")
    b = pair["batch"]
    h_s, h_t = hidden(pair)
    h_s = h_s.detach().requires_grad_()
    out = distiller.loss_from_hidden(b, h_s, h_t, tokens_of(b))
    out.loss.backward()
    assert math.isfinite(out.loss.item()) and out.loss.item() > 0
    assert torch.isfinite(h_s.grad).all() and h_s.grad.abs().sum() > 0
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in distiller.parameters())


def test_empty_batch_gives_a_connected_zero(pair):
    b = dict(pair["batch"])
    b["labels"] = torch.full_like(b["labels"], -100)
    for method in CROSS:
        out = make(pair, method)(b, TokenCounts(student=0.0, teacher=tokens_of(b).teacher))
        assert out.loss.item() == 0.0 and out.loss.requires_grad


@pytest.mark.parametrize("method", CROSS)
def test_a_few_steps_reduce_the_loss(pair, method):
    student = copy.deepcopy(pair["student"]).train()
    distiller = make(pair, method, student=student)
    b, tokens = pair["batch"], tokens_of(pair["batch"])
    groups = distiller.param_groups()
    for group in groups:
        group["lr"] = 1e-2 if group["name"] != "projectors" else 3e-3
    optimizer = torch.optim.AdamW(groups)
    losses = []
    for _ in range(6):
        out = distiller(b, tokens)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] * 0.9, losses
    assert 0.0 < out.metrics["align_ratio"] <= 1.0


# ---- refusal of same-vocabulary methods ---------------------------------------------------------------------


def test_vanilla_kd_on_the_cross_pair_is_refused_before_training(pair, tmp_path):
    from dskd_core.errors import PreflightError
    from dskd_core.preflight import preflight
    from dskd_core.train import PreflightError as TrainPreflightError
    from dskd_core.train import run_job

    spec = make_spec(pair["world"], "vanilla_kd")
    with pytest.raises(PreflightError, match=r"Valid methods for this pair: .*dskd_cma, dskd_eta"):
        preflight(spec)
    with pytest.raises(TrainPreflightError, match="dskd_cma"):
        run_job(spec, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_dskd_train_refuses_vanilla_kd_on_the_cross_pair(pair, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from dskd_cli.main import app

    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(make_spec(pair["world"], "vanilla_kd").model_dump(mode="json")))
    result = CliRunner().invoke(app, ["train", str(spec_file), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "dskd_cma" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run" / "checkpoints").exists()
