"""sft, vanilla_kd and dskd on tiny random models, checked against direct full-logit computations."""

import copy

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from dskd_core import fused
from dskd_core.distillers import DistillContext, TokenCounts, get_distiller_class
from dskd_core.distillers.common import same_vocabulary
from dskd_core.spec import CROSS_VOCAB_METHODS, DataSpec, DistillSpec, JobSpec, Method, ModelSpec
from tests.core.test_fused_terms import assert_same_on_both_paths

VOCAB = 64  # real tokenizer size; the teacher's embedding is padded to 72, the student's to 80
D_S, D_T = 32, 48
SEED = 5  # every test starts from this generator state (a seed where the checks below are meaningful)


def make_tokenizer(swap: bool = False) -> PreTrainedTokenizerFast:
    words = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(VOCAB - 3)]
    if swap:  # same strings, two ids exchanged: a different vocabulary
        words[5], words[6] = words[6], words[5]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


@pytest.fixture(autouse=True)
def _seeded() -> None:
    # Random projectors and samples come from the global generator: seeded per test, each test sees the same
    # numbers in any order (mutation runs and pytest-randomly reorder tests).
    torch.manual_seed(SEED)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def models_pair():  # per test: a test that changes the models (mode, weights) cannot change another's numbers
    torch.manual_seed(0)
    teacher = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=72, n_embd=D_T, n_layer=2, n_head=2, n_positions=32, bos_token_id=1, eos_token_id=1
        )
    )
    student = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=80,
            hidden_size=D_S,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            tie_word_embeddings=False,
            max_position_embeddings=64,
        )
    )
    torch.manual_seed(SEED)  # as _seeded: the test's own random numbers do not depend on the models' creation
    return student, teacher.eval().requires_grad_(False)


def make_batch(seed: int = 0, rows: int = 4, length: int = 10) -> dict[str, torch.Tensor]:
    """Right-padded rows of different lengths; prompt positions and padding carry label -100."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (rows, length), generator=g)
    mask = torch.zeros(rows, length, dtype=torch.long)
    labels = torch.full((rows, length), -100)
    for b in range(rows):
        n = length - b  # row lengths length, length-1, ...
        prompt = 2 + b % 3
        mask[b, :n] = 1
        ids[b, n - 1] = 1  # EOS
        ids[b, n:] = 0
        labels[b, prompt - 1 : n - 1] = ids[b, prompt:n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def make_distiller(method, student, teacher, tokenizer, teacher_tokenizer=None, **distill):
    spec = JobSpec(
        teacher=ModelSpec(name_or_path="teacher"),
        student=ModelSpec(name_or_path="student"),
        data=DataSpec(path="data.jsonl"),
        distill=DistillSpec(**{"method": method, "loss_chunk_size": 16, **distill}),
    )
    ctx = DistillContext(spec, student, teacher, tokenizer, teacher_tokenizer or tokenizer)
    return get_distiller_class(method)(ctx)


def tokens_of(batch) -> TokenCounts:
    return TokenCounts(student=float((batch["labels"] != -100).sum()))


# ---- independent references: full logits over the real vocabulary, explicit formulas -------------------------


def full_outputs(model, batch):
    out = model(batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    valid = batch["labels"] != -100
    return out.logits[..., :VOCAB][valid], out.hidden_states[-1][valid], batch["labels"][valid]


def ref_divergence(name, q_logits, p_logits, tau):
    log_q, log_p = F.log_softmax(q_logits / tau, -1), F.log_softmax(p_logits / tau, -1)
    if name == "fkl":
        return F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
    if name == "rkl":
        return F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1)
    raise AssertionError(name)


def ref_dskd_terms(distiller, student, teacher, batch, *, name, tau, v2, detach_t2s_head=True):
    """Per-token means of each DSKD term, from full logits and explicitly built projections."""
    s_logits, h_s, y = full_outputs(student, batch)
    with torch.no_grad():
        t_logits, h_t, _ = full_outputs(teacher, batch)
    w_s = student.lm_head.weight[:VOCAB]
    w_t = teacher.lm_head.weight[:VOCAB]
    t2s = distiller.t2s
    z_t2s = F.linear(h_t, t2s.weight, t2s.bias) @ (w_s.detach() if detach_t2s_head else w_s).T
    if distiller.ideal:
        p = w_s.detach().T @ torch.linalg.pinv(w_t.T)  # P = W_s^T · pinv(W_t^T)
        z_s2t = h_s @ p @ w_t.T
    else:
        z_s2t = F.linear(h_s, distiller.s2t.weight, distiller.s2t.bias) @ w_t.T
    agree = z_t2s.argmax(-1) == t_logits.argmax(-1)
    kd_stu = ref_divergence(name, s_logits, z_t2s.detach(), tau)
    n = y.numel()
    return {
        "ce": F.cross_entropy(s_logits, y, reduction="sum") / n,
        "kd_student_space": (kd_stu * agree).sum() / n if v2 else kd_stu.mean(),
        "ce_t2s": F.cross_entropy(z_t2s, t_logits.argmax(-1) if v2 else y, reduction="sum") / n,
        "kd_teacher_space": ref_divergence(name, z_s2t, t_logits, tau).mean(),
        "t2s_acc": (z_t2s.argmax(-1) == y).float().mean(),
        "agreement": agree.float().mean(),
        "s2t_acc": (z_s2t.argmax(-1) == y).float().mean(),
    }


def close(a, b, tol=1e-5):
    a, b = (float(x.detach()) if isinstance(x, torch.Tensor) else float(x) for x in (a, b))
    return abs(a - b) <= tol * max(1.0, abs(b))


# ---- values ----------------------------------------------------------------------------------------------------


def test_sft_is_cross_entropy_over_response_tokens(models_pair, tokenizer):
    student, _ = models_pair
    batch = make_batch(1)
    out = make_distiller(Method.sft, student, None, tokenizer)(batch, tokens_of(batch))
    s_logits, _, y = full_outputs(student, batch)
    assert close(out.loss, F.cross_entropy(s_logits, y))
    assert close(out.metrics["ce"], out.loss) and close(out.metrics["loss"], out.loss)


@pytest.mark.parametrize("scaling", ["none", "tau2"])
def test_vanilla_kd_mixes_ce_and_forward_kl(models_pair, tokenizer, scaling):
    student, teacher = models_pair
    batch = make_batch(2)
    r, tau = 0.3, 2.0
    kd = make_distiller(
        Method.vanilla_kd,
        student,
        teacher,
        tokenizer,
        kd_rate=r,
        temperature=tau,
        temperature_scaling=scaling,
    )
    out = kd(batch, tokens_of(batch))
    s_logits, _, y = full_outputs(student, batch)
    with torch.no_grad():
        t_logits, _, _ = full_outputs(teacher, batch)
    fkl = ref_divergence("fkl", s_logits, t_logits, tau).mean()
    factor = tau**2 if scaling == "tau2" else 1.0
    assert close(out.loss, (1 - r) * F.cross_entropy(s_logits, y) + r * factor * fkl)
    assert close(out.metrics["kd_divergence"], fkl) and close(out.metrics["loss"], out.loss)


@pytest.mark.parametrize(
    ("variant", "name", "init"),
    [("v1", "fkl", "random"), ("v2", "fkl", "ideal"), ("v2", "rkl", "random"), ("v1", "rkl", "random")],
)
def test_dskd_terms_match_direct_computation(models_pair, tokenizer, variant, name, init):
    student, teacher = models_pair
    batch = make_batch(3)
    r, tau = 0.4, 2.0
    d = make_distiller(
        Method.dskd,
        student,
        teacher,
        tokenizer,
        kd_rate=r,
        temperature=tau,
        divergence=name,
        dskd_variant=variant,
        projector_init=init,
    )
    out = d(batch, tokens_of(batch))
    ref = ref_dskd_terms(d, student, teacher, batch, name=name, tau=tau, v2=variant == "v2")
    for key, value in ref.items():
        assert close(out.metrics[key], value, 1e-4), (key, out.metrics[key], float(value))
    kd = ref["kd_student_space"] + ref["ce_t2s"] + ref["kd_teacher_space"]
    assert close(out.loss, (1 - r) * ref["ce"] + r * kd, 1e-4)
    if variant == "v2":  # the agreement mask must actually drop positions for this check to mean anything
        assert 0.0 < out.metrics["agreement"] < 1.0


def test_dskd_v1_uses_the_configured_divergence_in_the_teacher_space(models_pair, tokenizer):
    """The published v1 fixed forward KL in the teacher space; here both spaces use `divergence` (the choice the
    spec's dskd_variant description states), so v1 with rkl is not v1 with fkl there."""
    student, teacher = models_pair
    batch = make_batch(6)
    d = make_distiller(
        Method.dskd,
        student,
        teacher,
        tokenizer,
        divergence="rkl",
        dskd_variant="v1",
        projector_init="random",
        temperature=0.25,  # sharp enough that RKL and FKL differ at first order on these random models
    )
    out = d(batch, tokens_of(batch))
    _, h_s, _ = full_outputs(student, batch)
    with torch.no_grad():
        t_logits, _, _ = full_outputs(teacher, batch)
    z_s2t = F.linear(h_s, d.s2t.weight, d.s2t.bias) @ teacher.lm_head.weight[:VOCAB].T
    rkl = ref_divergence("rkl", z_s2t, t_logits, 0.25).mean().item()
    fkl = ref_divergence("fkl", z_s2t, t_logits, 0.25).mean().item()
    assert close(out.metrics["kd_teacher_space"], rkl, 1e-4)
    assert abs(rkl - fkl) > 0.1 * fkl


def test_dskd_tau2_scales_the_divergence_terms_only(models_pair, tokenizer):
    student, teacher = models_pair
    batch = make_batch(4)
    tau, r = 3.0, 0.5
    d = make_distiller(
        Method.dskd, student, teacher, tokenizer, kd_rate=r, temperature=tau, temperature_scaling="tau2"
    )
    out = d(batch, tokens_of(batch))
    ref = ref_dskd_terms(d, student, teacher, batch, name="fkl", tau=tau, v2=True)
    kd = tau**2 * (ref["kd_student_space"] + ref["kd_teacher_space"]) + ref["ce_t2s"]
    assert close(out.loss, (1 - r) * ref["ce"] + r * kd, 1e-4)


def test_dskd_kd_rate_override_gives_the_kd_part_alone(models_pair, tokenizer):
    """On-policy KD (split_loss) asks for the KD part alone with kd_rate=1.0, whatever the spec's rate."""
    student, teacher = models_pair
    batch = make_batch(5)
    d = make_distiller(Method.dskd, student, teacher, tokenizer, kd_rate=0.3)
    kd_only = d(batch, tokens_of(batch), kd_rate=1.0)
    ref = ref_dskd_terms(d, student, teacher, batch, name="fkl", tau=2.0, v2=True)
    assert close(kd_only.loss, ref["kd_student_space"] + ref["ce_t2s"] + ref["kd_teacher_space"], 1e-4)
    assert not close(kd_only.loss, d(batch, tokens_of(batch)).loss, 1e-3)  # the override changed something


@pytest.mark.parametrize("method", [Method.sft, Method.vanilla_kd, Method.dskd])
def test_batch_without_labels_gives_zero_and_backward_works(models_pair, tokenizer, method):
    student, teacher = models_pair
    batch = make_batch(5)
    batch["labels"].fill_(-100)
    d = make_distiller(method, student, teacher, tokenizer)
    student.zero_grad()
    out = d(batch, TokenCounts(student=0.0))
    assert out.loss.item() == 0.0 and out.loss.requires_grad
    out.loss.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() and not g.any() for g in grads)
    assert all(v == 0.0 for v in out.metrics.values())


# ---- gradient routing -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("init", ["random", "ideal"])
def test_dskd_gradient_routing(models_pair, tokenizer, init):
    student, teacher = models_pair
    batch = make_batch(6)
    r = 1.0  # KD only: the student head's gradient must then come from L_kd_stu alone
    d = make_distiller(
        Method.dskd, student, teacher, tokenizer, kd_rate=r, projector_init=init, dskd_variant="v1"
    )
    student.zero_grad()
    d.zero_grad()
    d(batch, tokens_of(batch)).loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())

    ref = ref_dskd_terms(d, student, teacher, batch, name="fkl", tau=2.0, v2=False)
    head = student.lm_head.weight
    (want_head,) = torch.autograd.grad(r * ref["kd_student_space"], head, retain_graph=True)
    torch.testing.assert_close(head.grad, want_head, atol=1e-6, rtol=1e-4)
    # Had the head not been detached in z_t2s, ce_t2s would have pushed it: the check above can fail.
    leaky = ref_dskd_terms(d, student, teacher, batch, name="fkl", tau=2.0, v2=False, detach_t2s_head=False)
    (leak,) = torch.autograd.grad(leaky["ce_t2s"], head)
    assert leak.abs().max() > 1e-3

    # P_t2s learns from ce_t2s only (kd_stu sees stop_grad(z_t2s)); P_s2t (random) from kd_tea only.
    (want_t2s,) = torch.autograd.grad(r * ref["ce_t2s"], d.t2s.weight, retain_graph=True)
    torch.testing.assert_close(d.t2s.weight.grad, want_t2s, atol=1e-6, rtol=1e-4)
    if init == "random":
        own = [d.s2t.weight, d.s2t.bias]
        want_s2t = torch.autograd.grad(r * ref["kd_teacher_space"], own, retain_graph=True)
        for got, want in zip(own, want_s2t, strict=True):
            torch.testing.assert_close(got.grad, want, atol=1e-6, rtol=1e-4)
    else:
        assert list(d.s2t.parameters()) == []


# ---- construction, state, micro-batching ------------------------------------------------------------------------


@pytest.mark.parametrize("method", [Method.vanilla_kd, Method.dskd])
def test_differing_tokenizers_are_refused_with_the_cross_vocabulary_methods(models_pair, tokenizer, method):
    student, teacher = models_pair
    assert same_vocabulary(tokenizer, make_tokenizer())  # equal but distinct objects pass
    other = make_tokenizer(swap=True)
    assert not same_vocabulary(tokenizer, other)
    other_eos, other_pad = make_tokenizer(), make_tokenizer()
    other_eos.eos_token, other_pad.pad_token = "<pad>", "<eos>"
    assert not same_vocabulary(tokenizer, other_eos)  # EOS is a label: it must be the same token
    assert same_vocabulary(tokenizer, other_pad)  # padding never reaches a label
    with pytest.raises(ValueError) as err:
        make_distiller(method, student, teacher, tokenizer, teacher_tokenizer=other)
    assert all(m in str(err.value) for m in CROSS_VOCAB_METHODS)


def test_dskd_ideal_init_uses_real_or_topk_columns_and_state_round_trips(models_pair, tokenizer):
    student, teacher = models_pair
    w_s, w_t = student.lm_head.weight.detach(), teacher.lm_head.weight
    d = make_distiller(Method.dskd, student, teacher, tokenizer)
    torch.testing.assert_close(
        d.t2s.weight, torch.linalg.pinv(w_s[:VOCAB]) @ w_t[:VOCAB], atol=1e-4, rtol=1e-3
    )
    top = make_distiller(Method.dskd, student, teacher, tokenizer, topk_vocab=40)
    torch.testing.assert_close(top.t2s.weight, torch.linalg.pinv(w_s[:40]) @ w_t[:40], atol=1e-4, rtol=1e-3)
    assert set(d.state_dict()) == {"t2s.weight"}  # the cached pseudo-inverse is rebuilt, not saved
    exported = d.export_state()
    assert exported["s2t.weight"].shape == (D_T, D_S)
    torch.testing.assert_close(exported["s2t.weight"], (w_s[:VOCAB].T @ torch.linalg.pinv(w_t[:VOCAB].T)).T)
    # Resume: a fresh distiller (re-initialised) takes the trained projector from the state dict.
    trained = {k: v + 0.5 for k, v in d.state_dict().items()}
    again = make_distiller(Method.dskd, student, teacher, tokenizer)
    again.load_state_dict(trained)
    torch.testing.assert_close(again.t2s.weight, trained["t2s.weight"])
    rand = make_distiller(Method.dskd, student, teacher, tokenizer, projector_init="random")
    assert set(rand.export_state()) == {"t2s.weight", "t2s.bias", "s2t.weight", "s2t.bias"}
    assert [g["name"] for g in rand.param_groups()][-1] == "projectors"


@pytest.mark.parametrize(
    ("method", "extra"),
    [(Method.vanilla_kd, {}), (Method.dskd, {"projector_init": "random", "dskd_variant": "v2"})],
)
def test_micro_batches_with_global_token_count_match_one_batch(models_pair, tokenizer, method, extra):
    """The engine's step (train_step: it counts the step's tokens itself) gives the same loss and gradients
    for two micro-batches as for one batch; the test supplies no divisor of its own."""
    from dskd_core.train import make_accelerator
    from dskd_core.training.step import TrainingModule, train_step

    student, teacher = models_pair
    batch = make_batch(7)
    halves = [{k: v[part] for k, v in batch.items()} for part in (slice(0, 1), slice(1, 4))]
    counts = [float((h["labels"] != -100).sum()) for h in halves]
    d = make_distiller(method, student, teacher, tokenizer, **extra)
    module = TrainingModule(student, d).eval()  # no dropout: both runs see the same function
    accelerator = make_accelerator("fp32", "cpu")

    def step(micro_batches):
        module.zero_grad(set_to_none=True)
        metrics, tokens = train_step(module, micro_batches, accelerator)
        grads = [p.grad.clone() for p in module.parameters() if p.grad is not None]
        assert grads  # the loop below compares something
        return metrics["loss"], tokens, grads

    loss_whole, tokens_whole, want = step([batch])
    loss_split, tokens_split, got = step(halves)
    assert tokens_whole == tokens_split == sum(counts)
    assert close(loss_split, loss_whole, 1e-5)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-4)
    # The comparison can fail: dividing each micro-batch by its own count gives another loss.
    with torch.no_grad():
        own = sum(float(d(h, tokens_of(h)).loss) * c for h, c in zip(halves, counts, strict=True)) / sum(
            counts
        )
        mean_of_means = sum(float(d(h, tokens_of(h)).loss) for h in halves) / 2
    assert close(own, loss_whole, 1e-5) and not close(mean_of_means, loss_whole, 1e-3)


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        (Method.sft, {}),
        (Method.vanilla_kd, {}),
        (Method.vanilla_kd, {"divergence": "akl", "temperature": 1.0}),
        (Method.dskd, {}),
        (Method.dskd, {"projector_init": "random", "dskd_variant": "v1", "divergence": "js"}),
    ],
)
def test_chunks_and_blocks_give_the_one_chunk_loss_and_gradients(
    models_pair, tokenizer, monkeypatch, method, extra
):
    """Several chunks of rows (loss_chunk_size) split into one-row blocks vs the default budget (one chunk here)."""
    student, teacher = models_pair
    batch = make_batch(3)

    def run(**distill):
        torch.manual_seed(0)  # the same random projectors on both sides
        d = make_distiller(method, student, teacher, tokenizer, **extra, **distill)
        student.zero_grad()
        out = d(batch, tokens_of(batch))
        out.loss.backward()
        params = list(student.parameters()) + list(d.parameters())
        return out, [p.grad.clone() for p in params if p.grad is not None]

    want, want_grads = run(loss_chunk_size=None)  # the default: the element budget
    monkeypatch.setattr(fused, "BLOCK_ELEMENTS", 1)  # a block is one row
    got, grads = run(loss_chunk_size=16)
    assert (batch["labels"] != -100).sum() > 16  # more than one chunk
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-5, atol=1e-6)
    assert got.metrics.keys() == want.metrics.keys()
    assert all(close(got.metrics[k], want.metrics[k]) for k in want.metrics)
    assert len(grads) == len(want_grads) > 0
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "extra", [{}, {"dskd_variant": "v1", "projector_init": "random", "temperature": 1.0, "kd_rate": 0.3}]
)
def test_dskd_analytic_terms_give_the_autograd_terms_loss_and_gradients(
    models_pair, tokenizer, monkeypatch, extra
):
    """Forward KL runs `fused_terms`' hand-written gradient; the same terms through autograd agree with it."""
    student, teacher = models_pair
    batch = make_batch(3)

    def run():
        torch.manual_seed(0)  # the same random projectors on both paths
        d = make_distiller(Method.dskd, student, teacher, tokenizer, **extra)
        student.zero_grad()
        out = d(batch, tokens_of(batch))
        out.loss.backward()
        params = list(student.parameters()) + list(d.parameters())
        return out, [p.grad.clone() for p in params if p.grad is not None]

    assert_same_on_both_paths(run, monkeypatch)


# ---- a few optimisation steps ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", [Method.sft, Method.vanilla_kd, Method.dskd])
def test_a_few_steps_reduce_the_loss(models_pair, tokenizer, method):
    student, teacher = models_pair
    student = copy.deepcopy(student)
    batch = make_batch(8)
    d = make_distiller(method, student, teacher, tokenizer, kd_rate=0.5)
    d.spec.training.lr = 1e-2
    opt = torch.optim.AdamW(d.param_groups())
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = d(batch, tokens_of(batch)).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_dskd_runs_under_bf16_autocast(models_pair, tokenizer):
    student, teacher = models_pair
    batch = make_batch(9)
    d = make_distiller(Method.dskd, student, teacher, tokenizer)
    reference = d(batch, tokens_of(batch)).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = d(batch, tokens_of(batch)).loss
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert close(loss, reference, 0.05)  # only the models' bodies ran in bf16
    loss.backward()
