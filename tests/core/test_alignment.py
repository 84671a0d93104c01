"""Cross-vocabulary alignment: canonical bytes, vocabulary map, exact (ETA) and MinED alignment.

Two small tokenizers are trained here: a byte-level BPE (GPT-2 style) and a SentencePiece-style BPE (Metaspace,
byte fallback with the 256 `<0xNN>` pieces in the model vocabulary, as Llama 2 ships them).
"""

from __future__ import annotations

import importlib
import json
import random

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from dskd_core.alignment import (
    Convention,
    align_batch,
    alignment_ratio,
    build_vocab_map,
    canonical_text_bytes,
    canonical_token_bytes,
    eta_teacher_index,
    exact_alignment,
    mined_aligner,
    mined_alignment,
    mined_teacher_index,
    token_bytes_table,
    token_table,
    tokenization_identical,
    vocab_overlap,
)
from dskd_core.alignment.exact import alignment_unit

WORDS = [
    "café", "crème", "brûlée", "für", "Müller", "über", "niño", "año", "señor", "naïve", "the", "quick",
    "brown", "fox", "jumps", "over", "lazy", "dog", "list", "sort", "reverse", "answer", "question",
    "12", "345", "6789", "3.14", "-7", "😀", "🎉", "👍🏽", "日本", "Ελλάδα", "(x)", "a+b=c", "end.", "why?",
]  # fmt: skip
SEPARATORS = [" ", " ", " ", " ", "  ", "   ", "\n", "\n\n", "\t", " \t", ", ", ". "]


def random_text(rng: random.Random, words: int) -> str:
    parts = []
    for _ in range(words):
        parts += [rng.choice(WORDS), rng.choice(SEPARATORS)]
    return "".join(parts[:-1])


CORPUS = [random_text(random.Random(seed), 60) for seed in range(150)]
TEXTS = [random_text(random.Random(1000 + seed), 40) for seed in range(40)] + [
    "Café für Müller", " leading space", "\nnewline first", "tabs\t\tand  spaces   ", "x", "😀", "ñ",
    "unseen: € ß Zq 🚀",
]  # fmt: skip


def _byte_level() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|pad|>",
    )


def _sentencepiece() -> PreTrainedTokenizerFast:
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=380, special_tokens=specials, show_progress=False)
    trained.train_from_iterator(CORPUS, trainer)
    model = json.loads(trained.to_str())["model"]
    # Llama-2 layout: specials, then the 256 byte pieces, then the learned pieces, all in the model vocabulary.
    vocab = {token: i for i, token in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for token in sorted(model["vocab"], key=model["vocab"].get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


@pytest.fixture(scope="module")
def byte_level() -> PreTrainedTokenizerFast:
    return _byte_level()


@pytest.fixture(scope="module")
def sentencepiece() -> PreTrainedTokenizerFast:
    return _sentencepiece()


def encode(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def sp_expected_bytes(text: str) -> bytes:
    # Metaspace(prepend_scheme="first") adds one dummy space unless the text already starts with a space.
    data = text.encode("utf-8")
    return data if not text or text.startswith(" ") else b" " + data


# ---------------------------------------------------------------- canonical bytes


def test_convention_detected_from_backend(byte_level, sentencepiece):
    assert token_table(byte_level).convention is Convention.BYTE_LEVEL
    assert token_table(sentencepiece).convention is Convention.SENTENCEPIECE


def test_canonical_bytes_round_trip(byte_level, sentencepiece):
    for text in TEXTS:
        assert canonical_text_bytes(byte_level, encode(byte_level, text)) == text.encode("utf-8"), text
        assert canonical_text_bytes(sentencepiece, encode(sentencepiece, text)) == sp_expected_bytes(text), text
        # The tokenizers' own decoders agree (the SentencePiece decoder strips the dummy space again).
        assert byte_level.decode(encode(byte_level, text)) == text
    sp_ids = encode(sentencepiece, "unseen: € ß Zq 🚀")
    assert any(token_table(sentencepiece).byte_fallback[i] for i in sp_ids), "byte fallback not exercised"


def test_canonical_bytes_of_spelled_tokens(byte_level, sentencepiece):
    bl_vocab = byte_level.get_vocab()
    assert canonical_token_bytes(byte_level, bl_vocab["Ġ"]) == b" "
    assert canonical_token_bytes(byte_level, bl_vocab["Ċ"]) == b"\n"
    assert canonical_token_bytes(byte_level, bl_vocab["Ã"]) == b"\xc3"
    if "Ã©" in bl_vocab:
        assert canonical_token_bytes(byte_level, bl_vocab["Ã©"]) == "é".encode()
    sp_vocab = sentencepiece.get_vocab()
    assert canonical_token_bytes(sentencepiece, sp_vocab["<0xC3>"]) == b"\xc3"
    assert canonical_token_bytes(sentencepiece, sp_vocab["<0x0A>"]) == b"\n"
    assert canonical_token_bytes(sentencepiece, sp_vocab["▁"]) == b" "
    assert canonical_token_bytes(sentencepiece, sp_vocab["é"]) == "é".encode()
    for tok in (byte_level, sentencepiece):
        table = token_bytes_table(tok)
        assert len(table) == len(tok)
        for special in tok.all_special_ids:
            assert table[special] is None


def test_trainer_registered_byte_tokens_are_bytes():
    """Trainers register `<0xNN>` as added *special* tokens; they still stand for their byte, not a marker."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    specials = ["<unk>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tok.train_from_iterator(CORPUS[:5], trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")
    vocab = wrapped.get_vocab()
    assert canonical_token_bytes(wrapped, vocab["<0x41>"]) == b"A"
    assert canonical_token_bytes(wrapped, vocab["</s>"]) is None


# ---------------------------------------------------------------- vocabulary map


def test_vocab_map_identical_tokenizers(byte_level):
    copy = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(byte_level.backend_tokenizer.to_str()),
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|pad|>",
    )
    assert tokenization_identical(byte_level, copy)
    mapping = build_vocab_map(byte_level, copy)
    assert mapping.tolist() == list(range(len(byte_level)))
    report = vocab_overlap(byte_level, copy)
    assert report.identical and report.teacher_fraction == 1.0 and report.student_fraction == 1.0
    assert report.shared_count == len(byte_level)


def test_vocab_map_across_families(byte_level, sentencepiece):
    mapping = build_vocab_map(byte_level, sentencepiece)
    assert mapping.shape == (len(byte_level),) and mapping.dtype.is_floating_point is False
    t_bytes, s_bytes = token_bytes_table(byte_level), token_bytes_table(sentencepiece)
    s_table = token_table(sentencepiece)
    for t_id, s_id in enumerate(mapping.tolist()):
        if s_id >= 0 and t_bytes[t_id] is not None:
            assert s_bytes[s_id] == t_bytes[t_id]  # exact bytes, space included
            if not s_table.byte_fallback[s_id]:
                continue
            # A byte token is a target only when the student has no regular piece with those bytes.
            assert all(s_bytes[k] != t_bytes[t_id] or s_table.byte_fallback[k] for k in range(len(s_bytes)))
        elif t_bytes[t_id] is not None:
            assert t_bytes[t_id] not in s_bytes
    # Specials map explicitly; nothing falls into the student's unknown id by accident.
    assert mapping[byte_level.eos_token_id] == sentencepiece.eos_token_id
    assert mapping[byte_level.pad_token_id] == sentencepiece.pad_token_id
    assert sentencepiece.unk_token_id not in mapping.tolist()
    back = build_vocab_map(sentencepiece, byte_level)
    assert back[sentencepiece.eos_token_id] == byte_level.eos_token_id
    assert back[sentencepiece.bos_token_id] == byte_level.bos_token_id
    assert back[sentencepiece.get_vocab()["<0xC3>"]] == byte_level.get_vocab()["Ã"]
    assert (back == byte_level.unk_token_id).nonzero().flatten().tolist() == sorted(
        [sentencepiece.eos_token_id, sentencepiece.bos_token_id]
    )  # the BL unknown id is also its EOS/BOS: reached only through those roles
    report = vocab_overlap(byte_level, sentencepiece)
    assert not report.identical
    assert report.teacher_shared == int((mapping >= 0).sum())
    assert 0 < report.teacher_fraction < 1 and 0 < report.student_fraction < 1
    assert report.special_tokens["eos"] == (byte_level.eos_token_id, sentencepiece.eos_token_id)
    assert "EOS" in report.format() and report.as_dict()["teacher_vocab_size"] == len(byte_level)
