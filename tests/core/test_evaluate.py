"""Batched generation and generation-based scoring (Rouge-L, exact match, mean ± std over seeds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from rouge_score import rouge_scorer
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from dskd_core.evaluate import (
    evaluate_checkpoint,
    evaluate_model,
    exact_match,
    mean_std,
    normalize_answer,
    record_references,
    rouge_l,
    run_eval,
)
from dskd_core.generation import encode_prompts, generate_batch, generate_ids
from dskd_core.spec import EvalSpec, JobSpec

WORDS = [f"w{i}" for i in range(24)]
PAD, EOS, BOS = 0, 1, 2


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny models: one thread is faster than two contending ones and keeps the numerics run-to-run identical.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _example(k: int) -> tuple[str, str]:
    """A counting task: prompts of 1-3 words, responses continuing the count for 1-5 words."""
    prompt_words = [WORDS[j % 24] for j in range(k, k + k % 3 + 1)]
    last = k + k % 3
    response_words = [WORDS[(last + 1 + j) % 24] for j in range(k % 5 + 1)]
    return "start " + " ".join(prompt_words), " ".join(response_words)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": PAD, "<eos>": EOS, "<bos>": BOS, "start": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>", bos_token="<bos>"
    )


def _train(model: torch.nn.Module, tokenizer, steps: int = 15) -> torch.nn.Module:
    # Briefly trained so responses have varied lengths and end with EOS, yet stay imperfect.
    texts = [f"{p} {r} <eos>" for p, r in (_example(k) for k in range(24))]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        model(**enc, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


@pytest.fixture(scope="module")
def gpt2(tokenizer) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
    )  # fmt: skip
    return _train(GPT2LMHeadModel(config), tokenizer)


@pytest.fixture(scope="module")
def llama(tokenizer) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
    )  # fmt: skip
    return _train(LlamaForCausalLM(config), tokenizer)


PROMPTS = [_example(k)[0] for k in range(12)]


# --- metrics -------------------------------------------------------------------------------------------------


def test_rouge_l_agrees_with_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    pairs = [
        ("The cats are running in the garden", "a cat runs in the gardens"),
        ("Paris is the capital of France.", "The capital of France is Paris."),
        ("completely unrelated words", "nothing shared here"),
        ("identical answer", "identical answer"),
    ]
    for pred, ref in pairs:
        assert rouge_l(pred, ref) == pytest.approx(100 * scorer.score(ref, pred)["rougeL"].fmeasure)
    assert rouge_l("identical answer", "identical answer") == pytest.approx(100.0)
    assert rouge_l("completely unrelated words", "nothing shared here") == 0.0
    assert rouge_l("", "a reference") == 0.0


def test_rouge_l_takes_the_best_reference():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    pred = "the quick brown fox jumps"
    refs = ["a slow dog sleeps", "the quick brown fox leaps high", "quick fox"]
    per_ref = [100 * scorer.score(r, pred)["rougeL"].fmeasure for r in refs]
    assert rouge_l(pred, refs) == pytest.approx(max(per_ref))
    assert rouge_l(pred, refs) > rouge_l(pred, refs[0])
    with pytest.raises(ValueError):
        rouge_l(pred, [])


def test_exact_match_normalises_case_and_whitespace_only():
    assert normalize_answer("  Hello \n\t World ") == "hello world"
    assert exact_match("Hello   world", "hello world") == 100.0
    assert exact_match(" PARIS\n", ["London", "paris"]) == 100.0
    assert exact_match("Paris.", "Paris") == 0.0  # punctuation is kept
    assert exact_match("Par is", "Paris") == 0.0
    assert exact_match("", ["", "x"]) == 100.0


def test_record_references_union_without_duplicates():
    assert record_references({"response": "a"}) == ["a"]
    assert record_references({"response": "a", "references": ["b", "a", "c"]}) == ["a", "b", "c"]
    assert record_references({"references": ["b"]}) == ["b"]
    with pytest.raises(ValueError):
        record_references({"prompt": "p"})


def test_mean_std_is_population_std():
    values = [31.5, 29.0, 30.25, 33.0, 28.75]
    result = mean_std(values)
    assert result.mean == pytest.approx(np.mean(values))
    assert result.std == pytest.approx(np.std(values, ddof=0))
    assert mean_std([7.0]).std == 0.0


# --- generation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_batched_greedy_equals_one_by_one(family, request, tokenizer):
    model = request.getfixturevalue(family)
    batched = generate_ids(model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=5)
    single = [generate_ids(model, tokenizer, [p], max_new_tokens=8)[0] for p in PROMPTS]
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]
    assert generate_batch(model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=12) == [
        g.text for g in single
    ]
    # Non-trivial: responses of several lengths, most stopped by EOS, none containing EOS or padding.
    lengths = {len(g.token_ids) for g in single}
    assert len(lengths) >= 3 and max(lengths) >= 3
    assert sum(g.finished for g in single) >= len(PROMPTS) // 2
    assert all(EOS not in g.token_ids and PAD not in g.token_ids for g in single)
    assert all(len(g.token_ids) == 8 for g in single if not g.finished)


def test_generation_respects_max_new_tokens_and_prompt_truncation(gpt2, tokenizer):
    out = generate_ids(gpt2, tokenizer, PROMPTS, max_new_tokens=2)
    assert all(len(g.token_ids) <= 2 for g in out)
    # Truncation keeps the prompt's end: a long prompt cut to its last 2 tokens behaves like that suffix alone.
    long_prompt = "start w0 w1 w2 w5 w6"
    cut = generate_batch(gpt2, tokenizer, [long_prompt], max_new_tokens=6, max_prompt_tokens=2)
    assert cut == generate_batch(gpt2, tokenizer, ["w5 w6"], max_new_tokens=6)


def test_prompts_get_one_bos_like_the_training_data(llama, tokenizer):
    from dskd_core.data import encode_example

    bos_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer.backend_tokenizer.to_str()),
        eos_token="<eos>", pad_token="<pad>", bos_token="<bos>",
    )  # fmt: skip
    bos_tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", BOS)]
    )
    assert bos_tokenizer("w1")["input_ids"] == [BOS, 5]
    prompts = ["start w1", "<bos> start w1", "start w0 w1 w2 w3"]
    assert encode_prompts(bos_tokenizer, prompts) == [[BOS, 3, 5], [BOS, 3, 5], [BOS, 3, 4, 5, 6, 7]]
    assert encode_prompts(bos_tokenizer, prompts[2:], max_prompt_tokens=3) == [[BOS, 6, 7]]
    # Same prompt ids as the training encoder, so the model is evaluated on the inputs it was trained on.
    train_ids = encode_example("start w1", "w2", bos_tokenizer, max_prompt_length=8, max_length=16)[
        "input_ids"
    ]
    assert train_ids[:3] == encode_prompts(bos_tokenizer, ["start w1"])[0]
    out = generate_batch(llama, bos_tokenizer, prompts[:2], max_new_tokens=5)
    assert out[0] == out[1]


def test_seeded_sampling_is_reproducible_and_seed_dependent(llama, tokenizer):
    kwargs = dict(max_new_tokens=8, do_sample=True, temperature=2.0, batch_size=4)
    rng_before = torch.random.get_rng_state()
    first = generate_batch(llama, tokenizer, PROMPTS, seed=10, **kwargs)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's RNG stream is untouched
    assert generate_batch(llama, tokenizer, PROMPTS, seed=10, **kwargs) == first
    assert generate_batch(llama, tokenizer, PROMPTS, seed=20, **kwargs) != first


def test_generation_restores_training_mode_and_keeps_bf16(tokenizer):
    torch.manual_seed(1)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=32, n_embd=16, n_layer=1, n_head=2, eos_token_id=EOS
    )
    model = GPT2LMHeadModel(config).to(torch.bfloat16).train()
    out = generate_ids(model, tokenizer, PROMPTS[:3], max_new_tokens=3)
    assert len(out) == 3 and model.training
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


# --- evaluation ----------------------------------------------------------------------------------------------


def _records(n: int = 10) -> list[dict]:
    records = [{"prompt": p, "response": r} for p, r in (_example(k) for k in range(n))]
    records[0]["references"] = ["w1 w2", "unrelated words"]
    return records


def test_evaluate_model_mean_std_over_seeds(llama, tokenizer):
    records = _records()
    settings = EvalSpec(
        seeds=[1, 2, 3], temperature=2.0, no_repeat_ngram_size=0, max_new_tokens=6, batch_size=4
    )
    result = evaluate_model(llama, tokenizer, records, settings=settings, keep_generations=True)
    # Independent recomputation: one generation pass per seed, scored with rouge-score directly.
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    per_seed_rouge, per_seed_em = [], []
    for seed in settings.seeds:
        preds = generate_batch(
            llama, tokenizer, [r["prompt"] for r in records],
            max_new_tokens=6, do_sample=True, temperature=2.0, seed=seed, batch_size=4,
        )  # fmt: skip
        rouge = [
            max(
                100 * scorer.score(ref, p)["rougeL"].fmeasure
                for ref in [r["response"], *r.get("references", [])]
            )
            for p, r in zip(preds, records, strict=True)
        ]
        em = [
            100.0 * any(p.strip().lower() == ref.lower() for ref in [r["response"], *r.get("references", [])])
            for p, r in zip(preds, records, strict=True)
        ]
        per_seed_rouge.append(np.mean(rouge))
        per_seed_em.append(np.mean(em))
    assert [s.seed for s in result.per_seed] == [1, 2, 3]
    assert [s.rougeL for s in result.per_seed] == pytest.approx(per_seed_rouge)
    assert [s.exact_match for s in result.per_seed] == pytest.approx(per_seed_em)
    assert result.rougeL.mean == pytest.approx(np.mean(per_seed_rouge))
    assert result.rougeL.std == pytest.approx(np.std(per_seed_rouge))
    assert result.exact_match.std == pytest.approx(np.std(per_seed_em))
    assert result.rougeL.std > 0  # temperature 2 makes the seeds disagree
    assert result.num_examples == len(records)
    assert len(result.generations) == len(records) * 3


def test_greedy_evaluation_is_one_pass(gpt2, tokenizer):
    records = _records()
    settings = EvalSpec(do_sample=False, max_new_tokens=6, max_examples=6)
    result = evaluate_model(gpt2, tokenizer, records, settings=settings)
    assert [s.seed for s in result.per_seed] == [None]
    assert result.rougeL.std == 0.0 and result.num_examples == 6
    preds = generate_batch(gpt2, tokenizer, [r["prompt"] for r in records[:6]], max_new_tokens=6)
    expected = np.mean([rouge_l(p, record_references(r)) for p, r in zip(preds, records[:6], strict=True)])
    assert result.rougeL.mean == pytest.approx(expected)
    assert 0.0 < result.rougeL.mean <= 100.0


def test_evaluate_checkpoint_and_run_eval_on_saved_dir(gpt2, tokenizer, tmp_path):
    gpt2.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    records = _records(6)
    settings = EvalSpec(do_sample=False, max_new_tokens=6)
    expected = evaluate_model(gpt2, tokenizer, records, settings=settings, keep_generations=True)
    loaded = evaluate_checkpoint(tmp_path / "model", records, settings, keep_generations=True)
    assert loaded.model_dump() == expected.model_dump()

    # run_eval: raw JSONL with aliased fields and a format template producing the same prompts.
    data = tmp_path / "dev.jsonl"
    with data.open("w") as f:
        for r in records:
            raw = {"instruction": r["prompt"].removeprefix("start "), "output": r["response"]}
            f.write(json.dumps({**raw, "references": r.get("references", [])}) + "\n")
    via_cli = run_eval(tmp_path / "model", data, settings, prompt_template="start {prompt}")
    assert via_cli.rougeL == expected.rougeL
    assert via_cli.exact_match == expected.exact_match


def test_job_spec_carries_eval_settings():
    spec = JobSpec.model_validate(
        {"student": {"name_or_path": "s"}, "data": {"path": "d.jsonl"}, "distill": {"method": "sft"}}
    )
    assert spec.evaluation.seeds == [10, 20, 30, 40, 50]
    assert spec.evaluation.do_sample and spec.evaluation.no_repeat_ngram_size == 6
    with pytest.raises(ValueError):
        EvalSpec(seeds=[])
