"""The toy world: seeded data with held-out items, two tokenizer families, a teacher that learned something."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dskd_core.spec import METHOD_INFO, JobSpec
from dskd_core.toy import build_toy_world
from dskd_core.toy.tasks import SIGNS, TASKS, generate, read_jsonl
from dskd_core.toy.tokenizers import train_byte_level_bpe, train_sentencepiece_bpe

HARD_STRINGS = [
    "Zoë lives in Málaga.\nSøren: 🐙",
    "Sort:\t3\t14\t159",
    "two  spaces,   three, \t tab-space, trailing   ",
    "   leading spaces",
    "\n\nnewlines first",
    "emoji 🌵🎸🚲 and CJK 日本語, ß, Ω, «quotes»",
    "<0x41> looks like a byte token",
]


def _records(world, split: str) -> list[dict]:
    return read_jsonl(getattr(world, split))


def test_generator_is_seeded():
    a = generate(120, "train", seed=3, stream=0)
    assert a == generate(120, "train", seed=3, stream=0)
    assert a != generate(120, "train", seed=4, stream=0)
    assert a != generate(120, "train", seed=3, stream=1)


def test_records_are_well_formed_and_some_tasks_have_several_answers():
    records = generate(len(TASKS) * 20, "train", seed=0, stream=0)
    assert {r["task"] for r in records} == set(TASKS)
    for r in records:
        assert r["response"] in r["references"]
        assert len(set(r["references"])) == len(r["references"])
    multi = {r["task"] for r in records if len(r["references"]) > 1}
    assert {"category", "synonym", "pick"} <= multi
    text = "".join(r["prompt"] + r["response"] for r in records)
    assert re.search(r"[^\x00-\x7f]", text) and re.search(r"\d", text)
    assert "\n" in text and "\t" in text and "  " in text and any(sign in text for sign in SIGNS)


def test_held_out_items_never_appear_in_training(toy_world):
    test = _records(toy_world, "test")
    seen = [r for split in ("teacher_train", "train", "dev") for r in _records(toy_world, split)]
    # An item is a function of its prompt, so disjoint prompts and disjoint item keys must agree.
    item_of = {}
    for r in test + seen:
        assert item_of.setdefault(r["prompt"], r["item"]) == r["item"]
    assert {(r["task"], r["item"]) for r in test}.isdisjoint({(r["task"], r["item"]) for r in seen})
    assert {r["prompt"] for r in test}.isdisjoint({r["prompt"] for r in seen})
    assert {r["task"] for r in test} == set(TASKS)
    # Sums of held-out additions: the pair (a, b) of a test question is never asked in training.
    pairs = lambda rs: {tuple(map(int, re.findall(r"\d+", r["prompt"]))) for r in rs if r["task"] == "add"}  # noqa: E731
    assert pairs(test) and pairs(test).isdisjoint(pairs(seen))
    # The teacher gets more data than the student, as in real distillation.
    assert len(_records(toy_world, "teacher_train")) > len(_records(toy_world, "train"))


def test_tokenizer_training_is_deterministic():
    corpus = [r["prompt"] + "\n" + r["response"] for r in generate(400, "train", seed=0, stream=0)]
    assert train_byte_level_bpe(corpus, 600).get_vocab() == train_byte_level_bpe(corpus, 600).get_vocab()
    assert (
        train_sentencepiece_bpe(corpus, 500).get_vocab() == train_sentencepiece_bpe(corpus, 500).get_vocab()
    )


@pytest.mark.parametrize("model", ["teacher", "cross_student"])
def test_saved_tokenizers_round_trip(toy_world, model):
    tok = AutoTokenizer.from_pretrained(getattr(toy_world, model))
    texts = HARD_STRINGS + [r["prompt"] + "\n" + r["response"] for r in _records(toy_world, "test")]
    for text in texts:
        assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(tok, name) is not None
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "What is 1 + 2?"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "What is 1 + 2?\n"


def test_the_two_tokenizers_are_different_families(toy_world):
    byte_tok = AutoTokenizer.from_pretrained(toy_world.teacher)
    sp_tok = AutoTokenizer.from_pretrained(toy_world.cross_student)
    assert len(byte_tok) != len(sp_tok)
    text = "Zoë wears 🐙 in Zürich"
    byte_pieces, sp_pieces = byte_tok.tokenize(text), sp_tok.tokenize(text)
    assert any(p.startswith("Ġ") for p in byte_pieces) and not any("▁" in p for p in byte_pieces)
    assert any(p.startswith("▁") for p in sp_pieces) and not any("Ġ" in p for p in sp_pieces)
    sp_vocab = sp_tok.get_vocab()
    assert all(f"<0x{b:02X}>" in sp_vocab for b in range(256))
    # 🐙 is outside the SentencePiece-style alphabet: it is spelled as its four UTF-8 bytes.
    assert [p for p in sp_pieces if p.startswith("<0x")] == [f"<0x{b:02X}>" for b in "🐙".encode()]
    assert sp_tok("x")["input_ids"][0] == sp_tok.bos_token_id  # Llama-style BOS; the byte-level one adds none
    assert byte_tok("x")["input_ids"] == byte_tok.convert_tokens_to_ids(["x"])


def test_models_are_three_families_with_their_tokenizers(toy_world):
    configs = {
        name: json.loads((getattr(toy_world, name) / "config.json").read_text())
        for name in ("teacher", "student", "cross_student")
    }
    assert [configs[n]["model_type"] for n in ("teacher", "student", "cross_student")] == [
        "gpt2",
        "llama",
        "llama",
    ]
    assert configs["teacher"]["n_embd"] != configs["student"]["hidden_size"]
    teacher_tok = AutoTokenizer.from_pretrained(toy_world.teacher)
    student_tok = AutoTokenizer.from_pretrained(toy_world.student)
    assert teacher_tok.get_vocab() == student_tok.get_vocab()
    # AutoTokenizer must load the saved tokenizer as is (no family class rebuilding its pipeline).
    from dskd_core.alignment import tokenization_identical

    assert tokenization_identical(teacher_tok, student_tok)
    # The teacher's embedding matrix is padded beyond its tokenizer, like real checkpoints.
    assert configs["teacher"]["vocab_size"] % 64 == 0 and configs["teacher"]["vocab_size"] >= len(teacher_tok)
    assert configs["student"]["vocab_size"] == len(student_tok)


def _response_cross_entropy(model_dir, records) -> float:
    """Mean CE over response tokens + EOS, written independently of the toy package's training code."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for r in records:
            prompt = tok(r["prompt"] + "\n")["input_ids"]
            target = tok(r["response"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            ids = torch.tensor([prompt + target])
            logp = torch.log_softmax(model(ids).logits[0, :, : len(tok)].double(), dim=-1)
            positions = torch.arange(len(prompt) - 1, ids.shape[1] - 1)
            total -= logp[positions, torch.tensor(target)].sum().item()
            count += len(target)
    return total / count


def test_teacher_learned_what_the_untrained_student_does_not_know(toy_world):
    dev = _records(toy_world, "dev")[:36]
    teacher = _response_cross_entropy(toy_world.teacher, dev)
    student = _response_cross_entropy(toy_world.student, dev)
    assert teacher < 0.5 * student, (teacher, student)
    assert toy_world.manifest["quality"]["teacher_dev_loss"] == pytest.approx(teacher, rel=0.2)


def test_demo_spec_validates_and_points_into_the_world(toy_world):
    spec = JobSpec.from_file(toy_world.demo_spec)
    assert METHOD_INFO[spec.distill.method].needs_teacher
    assert spec.teacher is not None
    assert spec.teacher.name_or_path == str(toy_world.teacher)
    assert spec.student.name_or_path == str(toy_world.student)
    assert spec.data.path == str(toy_world.train) and spec.data.dev_path == str(toy_world.dev)


def test_an_existing_world_is_reused(toy_world):
    weights = toy_world.teacher / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    again = build_toy_world(toy_world.root, size="fast", seed=0)
    assert again.manifest == toy_world.manifest
    assert weights.stat().st_mtime_ns == stamp
