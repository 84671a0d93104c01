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
        assert canonical_text_bytes(sentencepiece, encode(sentencepiece, text)) == sp_expected_bytes(text), (
            text
        )
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


# ---------------------------------------------------------------- exact alignment


def _hand_tokenizer(pieces: list[str], sentencepiece: bool) -> PreTrainedTokenizerFast:
    """A tokenizer whose vocabulary is spelled by hand (never used to encode: ids are picked by string)."""
    if sentencepiece:
        base = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
        tok = Tokenizer(
            models.BPE(vocab={p: i for i, p in enumerate(base + pieces)}, merges=[], byte_fallback=True)
        )
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.add_special_tokens(["<unk>", "<s>", "</s>"])
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
        )
    base = ["<|endoftext|>", *sorted(set(pre_tokenizers.ByteLevel.alphabet()))]
    tok = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(dict.fromkeys(base + pieces))}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="<|endoftext|>")


HAND_CASES = [
    # (teacher pieces, student pieces, expected pairs): an n:m span is skipped, the walk re-synchronises after it
    (["ab", "c", "Ġde"], ["▁a", "bc", "▁de"], [(2, 2)]),
    (["he", "llo", "Ġwor", "ld"], ["▁hel", "lo", "▁wor", "ld"], [(2, 2), (3, 3)]),
    (["the", "Ġcat"], ["▁the", "▁cat"], [(0, 0), (1, 1)]),  # the SentencePiece dummy prefix is no shift
    (["caf", "Ã©"], ["▁caf", "é"], [(0, 0), (1, 1)]),  # byte-level spelling vs a UTF-8 piece
    (["Ã", "©"], ["<0xC3>", "<0xA9>"], [(0, 0), (1, 1)]),  # split bytes vs byte fallback
    (["Ã©", "x"], ["<0xC3>", "<0xA9>", "x"], [(1, 2)]),
    (["a", "Ġ", "Ġb"], ["▁a", "▁", "▁b"], [(0, 0), (1, 1), (2, 2)]),  # whitespace-only tokens, in order
    (["a", "ĠĠ", "b"], ["▁a", "▁", "▁", "b"], [(0, 0), (1, 1), (2, 3)]),
    (["x", "<|endoftext|>"], ["▁x", "</s>"], [(0, 0), (1, 1)]),  # EOS ↔ EOS
    (["<|endoftext|>", "x"], ["<s>", "▁x"], [(1, 1)]),  # EOS is not BOS
    (["x", "<|endoftext|>"], ["▁x", "y"], [(0, 0)]),  # a special is never text
]


@pytest.mark.parametrize(("teacher_pieces", "student_pieces", "expected"), HAND_CASES)
def test_exact_alignment_hand_cases(teacher_pieces, student_pieces, expected):
    teacher = _hand_tokenizer(teacher_pieces, sentencepiece=False)
    student = _hand_tokenizer(student_pieces, sentencepiece=True)
    t_ids = teacher.convert_tokens_to_ids(teacher_pieces)
    s_ids = student.convert_tokens_to_ids(student_pieces)
    assert exact_alignment(t_ids, s_ids, teacher, student) == expected
    for backend in ("numba", "numpy"):
        got = align_batch([t_ids], [s_ids], teacher, student, backend=backend)[0].tolist()
        assert got == [list(p) for p in expected], backend


def test_exact_alignment_identical_tokenizers(byte_level, sentencepiece):
    for tok in (byte_level, sentencepiece):
        seqs = [[*encode(tok, text), tok.eos_token_id] for text in TEXTS]
        for ids, pairs in zip(seqs, align_batch(seqs, seqs, tok, tok), strict=True):
            assert pairs.tolist() == [[k, k] for k in range(len(ids))]
            assert exact_alignment(ids, ids, tok, tok) == [(k, k) for k in range(len(ids))]


def _random_ids(rng: random.Random, tok, length: int) -> list[int]:
    """Arbitrary ids (texts need not match), rich in specials and whitespace-only tokens."""
    spaces = [i for i, b in enumerate(token_bytes_table(tok)) if b is not None and b.strip(b" ") == b""]
    pool = [*range(len(tok)), *spaces * 20, *tok.all_special_ids * 20]
    return [rng.choice(pool) for _ in range(length)]


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_fast_alignment_equals_two_pointer(byte_level, sentencepiece, backend):
    rng = random.Random(0)
    for teacher, student in (
        (byte_level, sentencepiece),
        (sentencepiece, byte_level),
        (byte_level, byte_level),
    ):
        t_seqs, s_seqs = [], []
        for text in TEXTS + [random_text(rng, rng.randint(1, 80)) for _ in range(60)]:
            t_seqs.append([*encode(teacher, text), teacher.eos_token_id])
            s_seqs.append([*encode(student, text), student.eos_token_id])
        for _ in range(60):  # unrelated sequences: the equivalence does not rely on the texts being equal
            t_seqs.append(_random_ids(rng, teacher, rng.randint(0, 30)))
            s_seqs.append(_random_ids(rng, student, rng.randint(0, 30)))
        fast = align_batch(t_seqs, s_seqs, teacher, student, backend=backend)
        for t_ids, s_ids, pairs in zip(t_seqs, s_seqs, fast, strict=True):
            assert [tuple(p) for p in pairs.tolist()] == exact_alignment(t_ids, s_ids, teacher, student)


def _coinciding_student_tokens(text: str, teacher, student) -> tuple[set[int], int]:
    """Student positions whose span of non-space characters equals a teacher token's, from the tokenizers' own
    character offsets (independent of canonical bytes). Spans shared by several tokens of one side (pieces of one
    multi-byte character) are not comparable by characters and are left out."""
    nonspace_before = np.concatenate([[0], np.cumsum([c != " " for c in text])])

    def spans(tok) -> list[tuple[int, int] | None]:
        offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        stripped = [(int(nonspace_before[a]), int(nonspace_before[b])) for a, b in offsets]
        counts = {s: stripped.count(s) for s in stripped}
        return [s if s[1] > s[0] and counts[s] == 1 else None for s in stripped]

    teacher_spans = {s for s in spans(teacher) if s is not None}
    student_spans = spans(student)
    return {j for j, s in enumerate(student_spans) if s in teacher_spans}, len(student_spans)


def _check_ratio_bound(teacher, student, texts: list[str]) -> float:
    covered = expected = total = aligned = 0
    for text in texts:
        coinciding, n_student = _coinciding_student_tokens(text, teacher, student)
        t_ids, s_ids = encode(teacher, text), encode(student, text)
        assert len(s_ids) == n_student
        pairs = align_batch([t_ids], [s_ids], teacher, student)[0]
        aligned_students = set(pairs[:, 1].tolist())
        covered += len(coinciding & aligned_students)
        expected += len(coinciding)
        aligned += len(aligned_students)
        total += n_student
    assert expected > 0.3 * total  # enough shared boundaries for the bound to mean something
    assert covered >= 0.9 * expected, (covered, expected)
    assert aligned >= 0.9 * expected
    return aligned / total


def test_alignment_ratio_across_families(byte_level, sentencepiece):
    texts = [random_text(random.Random(5000 + k), 60) for k in range(30)]
    ratio = _check_ratio_bound(byte_level, sentencepiece, texts)
    assert (
        ratio > 0.3
    )  # this SentencePiece fixture merges across tabs and newlines, so fewer boundaries coincide
    _check_ratio_bound(sentencepiece, byte_level, texts)


def test_eta_teacher_index_on_label_rows(byte_level, sentencepiece):
    texts = TEXTS[:6]
    t_rows, s_rows, expected = [], [], []
    for k, text in enumerate(texts):  # prompt (ignored) + response labels + EOS, right-padded
        t_resp = [*encode(byte_level, text), byte_level.eos_token_id]
        s_resp = [*encode(sentencepiece, text), sentencepiece.eos_token_id]
        t_rows.append([-100] * (k + 2) + t_resp)
        s_rows.append([-100] * (3 * k) + s_resp)
        expected.append(
            [(k + 2 + i, 3 * k + j) for i, j in exact_alignment(t_resp, s_resp, byte_level, sentencepiece)]
        )
    pad = lambda rows: np.array([r + [-100] * (max(map(len, rows)) - len(r)) for r in rows])  # noqa: E731
    t_labels, s_labels = pad(t_rows), pad(s_rows)
    index = eta_teacher_index(t_labels, s_labels, byte_level, sentencepiece)
    numpy_index = eta_teacher_index(t_labels, s_labels, byte_level, sentencepiece, backend="numpy")
    assert (numpy_index == index).all()
    assert index.shape == s_labels.shape and index.dtype == np.int64
    for row, pairs in enumerate(expected):
        got = [(int(index[row, j]), j) for j in np.nonzero(index[row] >= 0)[0]]
        assert got == pairs
        assert (index[row][s_labels[row] == -100] == -1).all()
        assert index[row, len(s_rows[row]) - 1] == len(t_rows[row]) - 1  # EOS ↔ EOS
    single = eta_teacher_index(t_labels[0], s_labels[0], byte_level, sentencepiece)
    assert single.tolist() == index[0].tolist()
    assert 0.5 < alignment_ratio(index, s_labels) <= 1.0


# ---------------------------------------------------------------- MinED


def _symbols(tok, token_id: int, side: str) -> tuple:
    data = token_bytes_table(tok)[token_id]
    if data is None:
        role = token_table(tok).roles.get(token_id, "unused")
        return ((side, token_id),) if role in ("unk", "unused") else (("special", role),)
    return tuple(data.replace(b" ", b""))


def _levenshtein(a: tuple, b: tuple) -> int:
    previous = list(range(len(b) + 1))
    for x, ca in enumerate(a, 1):
        current = [x]
        for y, cb in enumerate(b, 1):
            current.append(min(previous[y - 1] + (ca != cb), previous[y] + 1, current[y - 1] + 1))
        previous = current
    return previous[-1]


def _reference_mined(t_ids, s_ids, teacher, student) -> tuple[list[int], int]:
    """Plain DP, same costs and tie order as documented in `mined.py`."""
    a = [_symbols(teacher, i, "teacher") for i in t_ids]
    b = [_symbols(student, j, "student") for j in s_ids]
    n, m = len(a), len(b)
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    move = [[""] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        cost[i][0], move[i][0] = cost[i - 1][0] + len(a[i - 1]) + 1, "up"
    for j in range(1, m + 1):
        cost[0][j], move[0][j] = cost[0][j - 1] + len(b[j - 1]) + 1, "left"
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            options = [
                (cost[i - 1][j - 1] + _levenshtein(a[i - 1], b[j - 1]), 0, "diag"),
                (cost[i - 1][j] + len(a[i - 1]) + 1, 1, "up"),
                (cost[i][j - 1] + len(b[j - 1]) + 1, 2, "left"),
            ]
            cost[i][j], _, move[i][j] = min(options)
    paired, i, j = [-1] * m, n, m
    while i > 0 and j > 0:
        if move[i][j] == "diag":
            paired[j - 1] = i - 1
            i, j = i - 1, j - 1
        elif move[i][j] == "up":
            i -= 1
        else:
            j -= 1
    return paired, cost[n][m]


def test_mined_matches_reference_dp(byte_level, sentencepiece):
    rng = random.Random(1)
    aligner = mined_aligner(byte_level, sentencepiece)
    cases = [
        (_random_ids(rng, byte_level, rng.randint(0, 9)), _random_ids(rng, sentencepiece, rng.randint(0, 9)))
    ]
    for _ in range(40):
        text = random_text(rng, rng.randint(1, 6))
        cases.append((encode(byte_level, text), encode(sentencepiece, text)))
        cases.append(
            (
                _random_ids(rng, byte_level, rng.randint(0, 9)),
                _random_ids(rng, sentencepiece, rng.randint(0, 9)),
            )
        )
    for t_ids, s_ids in cases:
        paired, cost = aligner.align(t_ids, s_ids)
        assert (paired.tolist(), cost) == _reference_mined(t_ids, s_ids, byte_level, sentencepiece)


def test_mined_identical_and_index_rows(byte_level, sentencepiece):
    ids = [*encode(sentencepiece, TEXTS[0]), sentencepiece.eos_token_id]
    assert mined_alignment(ids, ids, sentencepiece, sentencepiece).tolist() == list(range(len(ids)))
    t_resp = [*encode(byte_level, TEXTS[1]), byte_level.eos_token_id]
    s_resp = [*encode(sentencepiece, TEXTS[1]), sentencepiece.eos_token_id]
    t_labels = np.array([[-100, -100, *t_resp]])
    s_labels = np.array([[-100, *s_resp, -100, -100]])
    index = mined_teacher_index(t_labels, s_labels, byte_level, sentencepiece)
    paired = mined_alignment(t_resp, s_resp, byte_level, sentencepiece)
    expected = [-1] + [p + 2 if p >= 0 else -1 for p in paired.tolist()] + [-1, -1]
    assert index.tolist() == [expected]
    assert index[0, len(s_resp)] == len(t_resp) + 1  # EOS ↔ EOS
    # Exactly aligned positions are a subset of what MinED pairs on this text.
    eta = eta_teacher_index(t_labels, s_labels, byte_level, sentencepiece)
    agree = (eta >= 0) & (index == eta)
    assert agree.sum() >= 0.9 * (eta >= 0).sum()


# ---------------------------------------------------------------- the toy world's own tokenizers


@pytest.fixture(scope="module")
def toy_pair():
    toy = importlib.import_module("dskd_core.toy.tokenizers")  # built by the toy world; must exist
    return toy.train_byte_level_bpe(CORPUS, 600), toy.train_sentencepiece_bpe(CORPUS, 700, alphabet_size=60)


def test_toy_tokenizers(toy_pair):
    teacher, student = toy_pair
    assert token_table(teacher).convention is Convention.BYTE_LEVEL
    assert token_table(student).convention is Convention.SENTENCEPIECE
    for text in TEXTS:
        assert canonical_text_bytes(teacher, encode(teacher, text)) == text.encode("utf-8")
        # This student prepends "▁" in its normaliser (Llama-2 legacy): one dummy space, always.
        assert canonical_text_bytes(student, encode(student, text)) == b" " + text.encode("utf-8")
    rng = random.Random(7)
    texts = [random_text(rng, 50) for _ in range(20)]
    t_seqs = [[*encode(teacher, text), teacher.eos_token_id] for text in texts]
    s_seqs = [[*encode(student, text), student.eos_token_id] for text in texts]
    for t_ids, s_ids, pairs in zip(
        t_seqs, s_seqs, align_batch(t_seqs, s_seqs, teacher, student), strict=True
    ):
        assert [tuple(p) for p in pairs.tolist()] == exact_alignment(t_ids, s_ids, teacher, student)
        assert tuple(pairs[-1]) == (len(t_ids) - 1, len(s_ids) - 1)  # EOS ↔ EOS
    assert _check_ratio_bound(teacher, student, texts) >= 0.5
    mapping = build_vocab_map(teacher, student)
    assert mapping[teacher.eos_token_id] == student.eos_token_id
    assert student.unk_token_id not in mapping.tolist()
    report = vocab_overlap(teacher, student)
    assert not report.identical and 0 < report.student_fraction < 1
