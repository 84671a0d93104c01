"""The toy world: seeded data with held-out items, a pretraining corpus, two tokenizer families, pretrained
students and a teacher that learned more than SFT on the student's data reaches."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dskd_core.spec import METHOD_INFO, JobSpec
from dskd_core.toy import build_toy_world
from dskd_core.toy.tasks import CATEGORIES, SIGNS, TASKS, generate, pretraining_corpus, read_jsonl
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
    assert {"category", "synonym", "pick", "join"} <= multi
    text = "".join(r["prompt"] + r["response"] for r in records)
    assert re.search(r"[^\x00-\x7f]", text) and re.search(r"\d", text)
    assert "\n" in text and "\t" in text and "  " in text and any(sign in text for sign in SIGNS)


def test_several_valued_answers_follow_a_skewed_distribution():
    records = generate(len(TASKS) * 400, "train", seed=0, stream=0)
    # Category members: the best-ranked allowed member is the most frequent answer, far above a uniform share.
    category = [r for r in records if r["task"] == "category"]
    top = sum(r["response"] == r["references"][0] for r in category) / len(category)
    assert top > 1.5 / min(len(r["references"]) for r in category), top
    ranks = [CATEGORIES[r["prompt"].split()[2]].index(r["response"]) for r in category]
    assert sum(rank < 3 for rank in ranks) > sum(rank >= 3 for rank in ranks)
    # Joined sentences: three word orders, the first one the most common but not the only one.
    join = [r for r in records if r["task"] == "join"]
    first = sum(r["response"] == r["references"][0] for r in join) / len(join)
    assert 0.45 < first < 0.75 and all(len(r["references"]) == 3 for r in join)


def test_pretraining_corpus_is_generic_text_without_the_instruction_format():
    docs = pretraining_corpus(300, seed=0, stream=0)
    assert docs == pretraining_corpus(300, seed=0, stream=0) != pretraining_corpus(300, seed=0, stream=1)
    text = " ".join(docs)
    prompts = {r["prompt"] for r in generate(len(TASKS) * 30, "train", seed=0, stream=0)}
    assert not any(p in text for p in prompts)
    for marker in (
        "Sort from",
        "Say it with",
        "Join the",
        "What is",
        "Name a",
        "List, in any",
        "Reverse the",
    ):
        assert marker not in text, marker
    assert re.search(r"[^\x00-\x7f]", text) and re.search(r"\d", text)
    # World knowledge the instructions draw on: facts, sums, category members, synonyms.
    assert "lives in" in text and " plus " in text and " is a fruit." in text and " means " in text


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
    # 🐙 is outside the SentencePiece-style alphabet: it is spelled as its four UTF-8 bytes (so may rarer letters).
    octopus = [f"<0x{b:02X}>" for b in "🐙".encode()]
    assert any(sp_pieces[i : i + 4] == octopus for i in range(len(sp_pieces))), sp_pieces
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


def test_instruction_tuning_taught_the_teacher_what_the_pretrained_student_does_not_know(toy_world):
    dev = _records(toy_world, "dev")  # all of it: the manifest's dev loss is over the whole split
    teacher = _response_cross_entropy(toy_world.teacher, dev)
    student = _response_cross_entropy(toy_world.student, dev)
    assert teacher < 0.5 * student, (teacher, student)
    assert toy_world.manifest["quality"]["teacher_dev_loss"] == pytest.approx(teacher, rel=0.02)
    assert toy_world.manifest["quality"]["student_dev_loss"] == pytest.approx(student, rel=0.02)


def _document_perplexity(model_dir, docs) -> float:
    """Perplexity of BOS + document + EOS, every token after BOS scored (independent of the toy training code)."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for doc in docs:
            ids = [tok.bos_token_id, *tok(doc, add_special_tokens=False)["input_ids"], tok.eos_token_id]
            x = torch.tensor([ids])
            logp = torch.log_softmax(model(x).logits[0, :-1, : len(tok)].double(), dim=-1)
            total -= logp.gather(1, x[0, 1:, None]).sum().item()
            count += len(ids) - 1
    return math.exp(total / count)


@pytest.mark.parametrize("model", ["teacher", "student", "cross_student"])
def test_every_model_is_a_pretrained_language_model(toy_world, model):
    """Pretrained models predict held-out generic text far better than the same architecture at random init."""
    recorded = toy_world.manifest["corpus"][model]
    assert recorded["heldout_perplexity"] < 0.25 * recorded["heldout_perplexity_random_init"], recorded
    if model != "teacher":  # the teacher was instruction-tuned after pretraining: its saved weights moved on
        docs = [json.loads(line) for line in toy_world.corpus_heldout.read_text().splitlines()][:40]
        measured = _document_perplexity(getattr(toy_world, model), docs)
        assert measured == pytest.approx(recorded["heldout_perplexity"], rel=0.25)
    held_out = set(toy_world.corpus_heldout.read_text().splitlines())
    assert held_out.isdisjoint(toy_world.corpus.read_text().splitlines())


def test_the_teacher_beats_an_sft_student_trained_on_the_student_data(toy_world):
    q = toy_world.manifest["quality"]
    teacher, sft, pretrained = (q[f"{m}_dev_rougeL"]["all"] for m in ("teacher", "sft_student", "student"))
    assert teacher > sft + 10 > pretrained + 10, (teacher, sft, pretrained)
    # The teacher does every family, the number tasks included (v3's teacher never learned add, sort and pick; v4's
    # never learned pick): 5 dev records per family in the fast world's check, so a coarse bar per family.
    assert min(q["teacher_dev_rougeL"].values()) >= 70, q["teacher_dev_rougeL"]
    splits = toy_world.manifest["splits"]
    assert splits["teacher_train"]["records"] >= 10 * splits["train"]["records"]


def test_a_world_build_is_deterministic(tmp_path):
    """Same size and seed: the same manifest (but timings) and bit-identical weights and data."""
    a = build_toy_world(tmp_path / "a", size="tiny", seed=5)
    b = build_toy_world(tmp_path / "b", size="tiny", seed=5)

    def without_timings(manifest):
        return {k: v for k, v in manifest.items() if k not in ("build_seconds", "seconds")}

    assert without_timings(a.manifest) == without_timings(b.manifest)
    files = sorted(
        p.relative_to(a.root) for p in a.root.rglob("*") if p.is_file() and p.name != ".build.lock"
    )
    assert any(p.suffix == ".safetensors" for p in files) and any(p.name == "corpus.txt" for p in files)
    for rel in files:
        if rel.name != "manifest.json":
            assert (a.root / rel).read_bytes() == (b.root / rel).read_bytes(), rel
    c = build_toy_world(tmp_path / "c", size="tiny", seed=6)
    assert (c.root / "train.jsonl").read_bytes() != (a.root / "train.jsonl").read_bytes()


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


def test_a_reused_world_gets_the_current_demo_recipe_without_a_rebuild(toy_world):
    weights = toy_world.teacher / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    written = toy_world.demo_spec.read_text()
    toy_world.demo_spec.write_text("name: an older recipe\n")
    build_toy_world(toy_world.root, size="fast", seed=0)
    assert toy_world.demo_spec.read_text() == written
    assert weights.stat().st_mtime_ns == stamp
