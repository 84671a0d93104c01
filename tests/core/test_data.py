"""Data pipeline: layouts, errors, templates, masking, truncation, padding, splits, HF dirs, dual tokenisation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from dskd_core.data import (
    IGNORE_INDEX,
    Collator,
    DataError,
    Encoder,
    Record,
    ResumableSampler,
    build_datasets,
    encode_example,
    encode_examples,
    epoch_order,
    format_prompt,
    load_records,
    split_dev,
)
from dskd_core.spec import DataSpec, JobSpec

CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "Write a short poem about the sea and the sky, with waves and wind.",
    "Question: how many legs does a spider have? Answer: a spider has eight legs.",
    "Summarise the text below in one sentence. Context: cats sleep a lot during the day.",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz",  # every ASCII letter: no <unk> in test texts
    "Café, naïve, résumé: accents are bytes too. 0123456789 {}[]()<>|:;,.!?'\"-_/#*+=",
]


def _train_tokenizer(kind: str):
    """A tiny tokenizer trained in code: 'bytelevel' (GPT-2 style, no BOS) or 'metaspace' (SentencePiece style, adds BOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    if kind == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=specials)
    tok.train_from_iterator(CORPUS * 3, trainer=trainer)
    if kind == "metaspace":
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def student_tok():
    tok = _train_tokenizer("bytelevel")
    tok.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return tok


@pytest.fixture(scope="module")
def teacher_tok():
    tok = _train_tokenizer("metaspace")
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }} {% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    return tok


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _spec(path: Path, **data) -> JobSpec:
    return JobSpec(
        student={"name_or_path": "x"},
        data={"path": str(path), **data},
        distill={"method": "sft"},
        training={"max_prompt_length": 32, "max_length": 64},
    )


# --- records -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "prompt", "response", "context"),
    [
        ({"prompt": "P", "response": "R"}, "P", "R", None),
        ({"prompt": "P", "output": "R"}, "P", "R", None),
        ({"prompt": "P", "completion": "R"}, "P", "R", None),
        ({"question": "P", "answer": "R"}, "P", "R", None),
        ({"instruction": "P", "context": "C", "response": "R", "category": "qa"}, "P", "R", "C"),
        ({"instruction": "P", "input": "C", "output": "R"}, "P", "R", "C"),
        ({"instruction": "P", "context": "", "response": "R"}, "P", "R", None),
    ],
)
def test_pair_layouts_are_detected(tmp_path, row, prompt, response, context):
    [rec] = load_records(_jsonl(tmp_path / "d.jsonl", [row]))
    assert (rec.prompt, rec.response, rec.context) == (prompt, response, context)
    assert rec.messages is None
    assert rec.source == "d.jsonl line 1"


def test_messages_layout_and_extra_fields(tmp_path):
    conv = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
    ]
    rows = [{"messages": conv, "references": ["Paris", "paris"]}, {"messages": conv[1:3], "id": 7}]
    multi, single = load_records(_jsonl(tmp_path / "chat.jsonl", rows))
    assert multi.response == "Paris" and multi.messages == conv[:4]
    assert multi.prompt.startswith("System: Be brief.") and multi.prompt.endswith("User: Capital of France?")
    assert multi.references == ["Paris", "paris"]
    assert single.prompt == "Hi" and single.response == "Hello" and single.extra == {"id": 7}
    assert single.references == ["Hello"]


def test_explicit_field_names(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"q": "P", "a": "R", "ctx": "C", "prompt": "ignored"}])
    [rec] = load_records(DataSpec(path=str(path), prompt_field="q", response_field="a", context_field="ctx"))
    assert (rec.prompt, rec.response, rec.context) == ("P", "R", "C")
    assert rec.extra == {"prompt": "ignored"}
    chat = _jsonl(
        tmp_path / "c.jsonl",
        [{"turns": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}],
    )
    [rec] = load_records(DataSpec(path=str(chat), messages_field="turns"))
    assert (rec.prompt, rec.response) == ("u", "a")


@pytest.mark.parametrize(
    ("rows", "data", "expected"),
    [
        (
            [{"prompt": "a", "response": "b"}, {"prompt": "a", "reply": "b"}],
            {},
            ["bad.jsonl line 2", "no response field", "output", "data.response_field", "reply"],
        ),
        (
            [{"text": "hello"}],
            {},
            ["bad.jsonl line 1", "no prompt field", "data.prompt_field", "messages_field"],
        ),
        ([{"prompt": "a", "response": "b"}, "{not json"], {}, ["bad.jsonl line 2", "not valid JSON"]),
        (
            [{"q": "a", "response": "b"}],
            {"prompt_field": "question"},
            ["line 1", "no field 'question'", "data.prompt_field"],
        ),
        ([{"prompt": "a", "response": ["b"]}], {}, ["line 1", "'response' must be text", "list"]),
        ([{"prompt": "a", "response": "  "}], {}, ["line 1", "response", "empty"]),
        ([{"messages": [{"role": "user", "content": "a"}]}], {}, ["line 1", "no assistant turn"]),
        ([{"messages": [{"role": "user"}]}], {}, ["line 1", "turn 1", "'content'"]),
        ([], {}, ["empty"]),
    ],
)
def test_unusable_data_raises_actionable_errors(tmp_path, rows, data, expected):
    path = _jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_records(DataSpec(path=str(path), **data))
    for part in expected:
        assert part in str(err.value)


def test_missing_source(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_records(tmp_path / "nope.jsonl")


def test_hf_dataset_directories(tmp_path):
    import datasets

    rows = {"instruction": ["P1", "P2"], "context": ["C1", ""], "response": ["R1", "R2"]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "single"))
    recs = load_records(tmp_path / "single")
    assert [(r.prompt, r.context, r.response) for r in recs] == [("P1", "C1", "R1"), ("P2", None, "R2")]
    assert recs[1].source == "single row 2"

    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"prompt": ["a"], "output": ["b"]}),
            "validation": datasets.Dataset.from_dict({"prompt": ["c"], "output": ["d"]}),
        }
    )
    dd.save_to_disk(str(tmp_path / "dict"))
    assert load_records(tmp_path / "dict", split="validation")[0].prompt == "c"
    with pytest.raises(DataError, match=r"no split 'test'.*data\.split"):
        load_records(tmp_path / "dict", split="test")
    # dev_path pointing at the dict directory picks its validation split
    spec = _spec(tmp_path / "dict", dev_path=str(tmp_path / "dict"))
    ds = build_datasets(spec, _ByteTok.get(), dual=False)
    assert [r.prompt for r in ds.train_records] == ["a"] and [r.prompt for r in ds.dev_records] == ["c"]


class _ByteTok:
    """A module-level cache so tests without the fixture can reuse one trained tokenizer."""

    _tok = None

    @classmethod
    def get(cls):
        if cls._tok is None:
            cls._tok = _train_tokenizer("bytelevel")
        return cls._tok


# --- templates -----------------------------------------------------------------------------------------------


def test_templates(student_tok, teacher_tok):
    rec = Record(prompt="Summarise.", response="R", context="Cats sleep.")
    assert format_prompt(rec, "none") == "Summarise.\n\nCats sleep."
    assert format_prompt(Record("Hi", "R"), "none") == "Hi"
    both = "### Instruction:\n{prompt}\n### Input:\n{context}\n### Response:\n"
    assert (
        format_prompt(rec, both) == "### Instruction:\nSummarise.\n### Input:\nCats sleep.\n### Response:\n"
    )
    assert format_prompt(Record("Hi", "R"), both) == "### Instruction:\nHi\n### Input:\n\n### Response:\n"
    # no {context} placeholder: the context is joined into the prompt, never dropped
    assert format_prompt(rec, "Q: {prompt}\nA:") == "Q: Summarise.\n\nCats sleep.\nA:"
    assert format_prompt(rec, "chat", student_tok) == "<|user|>Summarise.\n\nCats sleep.\n<|assistant|>"
    conv = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    chat_rec = Record(prompt="System: S\n\nUser: U", response="R", messages=conv)
    assert format_prompt(chat_rec, "chat", student_tok) == "<|system|>S\n<|user|>U\n<|assistant|>"
    assert format_prompt(chat_rec, "chat", teacher_tok) == "<s>[system] S [user] U [assistant] "
    no_template = _ByteTok.get()
    with pytest.raises(DataError, match="no chat template"):
        format_prompt(rec, "chat", no_template)


# --- encoding ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["student", "teacher"])
def test_labels_are_response_plus_eos_shifted_once(kind, student_tok, teacher_tok):
    tok = student_tok if kind == "student" else teacher_tok
    prompt, response = "What is the capital of France?", "The capital of France is Paris."
    ex = encode_example(prompt, response, tok, max_prompt_length=64, max_length=128)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tok(response, add_special_tokens=False)["input_ids"]
    bos = [tok.bos_token_id] if kind == "teacher" else []  # only the SentencePiece-style one adds a BOS
    assert ex["input_ids"] == bos + p_ids + r_ids + [tok.eos_token_id]
    n_prompt = len(bos) + len(p_ids)
    ids, labels = ex["input_ids"], ex["labels"]
    valid = [t for t, label in enumerate(labels) if label != IGNORE_INDEX]
    assert valid == list(range(n_prompt - 1, len(ids) - 1))  # exactly the positions predicting response + EOS
    assert all(labels[t] == ids[t + 1] for t in valid)
    assert labels[-1] == IGNORE_INDEX
    assert tok.decode([labels[t] for t in valid], skip_special_tokens=True) == response
    assert ids.count(tok.eos_token_id) == 1 and ids.count(tok.bos_token_id) == len(bos)


def test_no_double_bos_when_template_renders_it(teacher_tok):
    ex = encode_example(
        "<s>[user] hi [assistant] ", "Paris.", teacher_tok, max_prompt_length=64, max_length=128
    )
    assert (
        ex["input_ids"][0] == teacher_tok.bos_token_id
        and ex["input_ids"].count(teacher_tok.bos_token_id) == 1
    )


def test_truncation_keeps_prompt_end_and_response_start(student_tok, teacher_tok):
    prompt = " ".join(f"w{i}" for i in range(40))
    response = " ".join(f"r{i}" for i in range(40))
    for tok, bos in ((student_tok, []), (teacher_tok, [teacher_tok.bos_token_id])):
        full_p = tok(prompt, add_special_tokens=False)["input_ids"]
        full_r = tok(response, add_special_tokens=False)["input_ids"]
        ex = encode_example(prompt, response, tok, max_prompt_length=10, max_length=25)
        ids = ex["input_ids"]
        assert len(ids) == 25
        assert ids[:10] == bos + full_p[-(10 - len(bos)) :]  # BOS kept in front, then the prompt's end
        assert ids[10:] == full_r[:15]  # the response's start; EOS did not fit
        assert tok.eos_token_id not in ids
        valid = [t for t, label in enumerate(ex["labels"]) if label != IGNORE_INDEX]
        assert valid == list(range(9, 24))
    # a response that fits keeps its EOS even when the prompt is cut
    ex = encode_example(prompt, "r1", student_tok, max_prompt_length=10, max_length=25)
    assert ex["input_ids"][-1] == student_tok.eos_token_id and len(ex["input_ids"]) < 25


def test_fully_truncated_responses_are_dropped_and_counted(student_tok, caplog):
    long_prompt = " ".join(["capital"] * 30)
    records = [Record("Hi", "Paris."), Record(long_prompt, "Paris."), Record("Hey", "Sea.")]
    # max_prompt_length == max_length leaves no room for a long prompt's response (the spec forbids it; the encoder counts it)
    enc = Encoder("none", max_prompt_length=8, max_length=8, student_tokenizer=student_tok)
    with caplog.at_level(logging.WARNING):
        ds = enc.dataset(records, name="train")
    assert len(ds) == 2 and ds.n_dropped == 1 and ds.record_indices == [0, 2]
    assert "1 of 3 examples dropped" in caplog.text


# --- batching ------------------------------------------------------------------------------------------------


def test_dynamic_padding(student_tok):
    enc = Encoder("none", max_prompt_length=32, max_length=64, student_tokenizer=student_tok)
    ds = enc.dataset(
        [Record("Hi", "Paris."), Record("What is the capital of France?", "The capital is Paris.")]
    )
    lengths = [len(ex["input_ids"]) for ex in ds]
    batch = Collator.from_tokenizers(student_tok)([ds[0], ds[1]])
    assert batch["input_ids"].shape == (2, max(lengths)) and max(lengths) < 64
    assert batch["attention_mask"].sum(1).tolist() == lengths
    short = lengths.index(min(lengths))
    pad = batch["input_ids"][short, min(lengths) :]
    assert (pad == student_tok.pad_token_id).all() and (
        batch["labels"][short, min(lengths) - 1 :] == IGNORE_INDEX
    ).all()
    assert batch["input_ids"].dtype == torch.long and set(batch) == {"input_ids", "labels", "attention_mask"}
    assert Collator.from_tokenizers(student_tok)([ds[short]])["input_ids"].shape[1] == min(lengths)


def test_epoch_order_and_resume():
    a, b = epoch_order(0, seed=3, num_examples=50), epoch_order(1, seed=3, num_examples=50)
    assert sorted(a) == list(range(50)) and a == epoch_order(0, seed=3, num_examples=50) and a != b
    assert a != epoch_order(0, seed=4, num_examples=50)
    assert epoch_order(2, seed=3, num_examples=5, shuffle=False) == [0, 1, 2, 3, 4]
    sampler = ResumableSampler(50, seed=3)
    sampler.set_epoch(1)
    assert list(sampler) == b
    resumed = ResumableSampler(50, seed=3)
    resumed.load_state_dict({"epoch": 1, "start": 16, "seed": 3, "shuffle": True})
    assert list(resumed) == b[16:] and len(resumed) == 34


def test_dev_split_is_deterministic_and_disjoint(tmp_path, student_tok):
    rows = [{"prompt": f"prompt {i}", "response": f"answer {i}"} for i in range(40)]
    path = _jsonl(tmp_path / "d.jsonl", rows)
    first = build_datasets(_spec(path, dev_ratio=0.25), student_tok, dual=False)
    again = build_datasets(_spec(path, dev_ratio=0.25), student_tok, dual=False)
    train_p = [r.prompt for r in first.train_records]
    dev_p = [r.prompt for r in first.dev_records]
    assert len(dev_p) == 10 and len(train_p) == 30 and not set(train_p) & set(dev_p)
    assert dev_p == [r.prompt for r in again.dev_records] and train_p == [
        r.prompt for r in again.train_records
    ]
    assert dev_p != [f"prompt {i}" for i in range(10)]  # shuffled, not the head of the file
    assert len(first.dev) == 10 and first.dev.record_indices == list(range(10))
    other = split_dev(load_records(path), 0.25, seed=1)[1]
    assert [r.prompt for r in other] != dev_p
    capped = build_datasets(
        _spec(path, dev_ratio=0.25, max_examples=5, dev_max_examples=3), student_tok, dual=False
    )
    assert [r.prompt for r in capped.train_records] == train_p[:5] and [
        r.prompt for r in capped.dev_records
    ] == dev_p[:3]
    dev_file = _jsonl(tmp_path / "dev.jsonl", rows[:2])
    sep = build_datasets(_spec(path, dev_path=str(dev_file)), student_tok, dual=False)
    assert len(sep.train) == 40 and [r.prompt for r in sep.dev_records] == ["prompt 0", "prompt 1"]
    assert build_datasets(_spec(path), student_tok, dual=False).dev is None


@pytest.mark.parametrize(
    ("other", "message"),
    [
        ({"dev_path": "dev.jsonl"}, "dev_dataset_id or dev_path"),
        ({"dev_ratio": 0.1}, "dev_dataset_id or dev_ratio"),
    ],
)
def test_dev_dataset_id_is_the_only_dev_source(tmp_path, other, message):
    with pytest.raises(ValidationError) as caught:
        _spec(tmp_path / "d.jsonl", dev_dataset_id="d" * 32, **other)
    [error] = caught.value.errors()
    assert error["loc"] == ("data", "dev_dataset_id") and message in error["msg"]
    alone = _spec(tmp_path / "d.jsonl", dev_dataset_id="d" * 32).data
    with pytest.raises(ValidationError, match="dev_dataset_id or dev_ratio"):
        alone.dev_ratio = 0.1  # the rule holds for assignments too


def test_an_unresolved_dev_dataset_id_is_bad_data_not_a_silent_run_without_dev(tmp_path, student_tok):
    path = _jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "response": "r"}] * 4)
    with pytest.raises(DataError, match=r"data\.dev_dataset_id is not resolved.*data\.dev_path"):
        build_datasets(_spec(path, dev_dataset_id="d" * 32), student_tok, dual=False)


# --- dual tokenisation ---------------------------------------------------------------------------------------

DUAL_ROWS = [
    {"instruction": "What is the capital of France?", "response": "The capital of France is Paris."},
    {
        "instruction": "How many legs does a spider have?",
        "context": "Spiders are arachnids.",
        "response": "Eight legs.",
    },
    {
        "messages": [
            {"role": "user", "content": "Write about the sea."},
            {"role": "assistant", "content": "Waves and wind, the sea and the sky."},
        ]
    },
]


def _span(labels: list[int]) -> tuple[int, list[int]]:
    valid = [t for t, label in enumerate(labels) if label != IGNORE_INDEX]
    return valid[0], [labels[t] for t in valid]


@pytest.mark.parametrize("template", ["chat", "Q: {prompt}\nA:"])
def test_dual_tokenisation_with_exact_alignment(tmp_path, student_tok, teacher_tok, template):
    path = _jsonl(tmp_path / "d.jsonl", DUAL_ROWS)
    ds = build_datasets(
        _spec(path, prompt_template=template), student_tok, teacher_tok, dual=True, alignments=("eta",)
    )
    batch = ds.collator([ds.train[i] for i in range(len(ds.train))])
    b, t_s = batch["input_ids"].shape
    t_t = batch["teacher_input_ids"].shape[1]
    assert b == 3 and batch["eta_teacher_index"].shape == (b, t_s) and "mined_teacher_index" not in batch
    assert batch["teacher_labels"].shape == batch["teacher_attention_mask"].shape == (b, t_t)
    assert t_t == int(batch["teacher_attention_mask"].sum(1).max())  # teacher side padded to its own longest
    aligned = total = 0
    for i, record in enumerate(ds.train_records):
        s_ids = batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()
        t_ids = batch["teacher_input_ids"][i][batch["teacher_attention_mask"][i].bool()].tolist()
        s_labels, t_labels = batch["labels"][i].tolist(), batch["teacher_labels"][i].tolist()
        assert student_tok.decode(_span(s_labels)[1], skip_special_tokens=True) == record.response
        assert teacher_tok.decode(_span(t_labels)[1], skip_special_tokens=True) == record.response
        assert t_ids[0] == teacher_tok.bos_token_id and t_ids.count(teacher_tok.bos_token_id) == 1
        assert s_ids[-1] == student_tok.eos_token_id and t_ids[-1] == teacher_tok.eos_token_id
        # every aligned pair predicts the same text after the same prefix (checked by decoding, spaces removed)
        s_start, s_span = _span(s_labels)
        t_start, t_span = _span(t_labels)

        def text(tok, ids):
            return tok.decode(ids, skip_special_tokens=True).replace(" ", "")

        index = batch["eta_teacher_index"][i].tolist()
        for t, j in enumerate(index):
            if j < 0:
                continue
            k, m = t - s_start, j - t_start
            assert 0 <= k < len(s_span) and 0 <= m < len(t_span)
            assert s_labels[t] != IGNORE_INDEX and t_labels[j] != IGNORE_INDEX
            assert text(student_tok, s_span[:k]) == text(teacher_tok, t_span[:m])
            assert text(student_tok, s_span[: k + 1]) == text(teacher_tok, t_span[: m + 1])
        assert index[s_start + len(s_span) - 1] == t_start + len(t_span) - 1  # EOS aligned with EOS
        aligned += sum(j >= 0 for j in index)
        total += len(s_span)
    assert aligned / total > 0.3  # plain ASCII text shares many token boundaries


def test_dual_with_given_aligners_and_padding(tmp_path, student_tok, teacher_tok):
    def in_order(teacher_labels, student_labels):
        """Pairs the k-th student label with the k-th teacher label (a ULD-style stand-in)."""
        out = torch.full(student_labels.shape, -1, dtype=torch.long).numpy()
        for r in range(student_labels.shape[0]):
            s_pos = (student_labels[r] != IGNORE_INDEX).nonzero()[0]
            t_pos = (teacher_labels[r] != IGNORE_INDEX).nonzero()[0]
            n = min(len(s_pos), len(t_pos))
            out[r, s_pos[:n]] = t_pos[:n]
        return out

    def nothing(teacher_labels, student_labels):
        return torch.full(student_labels.shape, -1).numpy()

    path = _jsonl(tmp_path / "d.jsonl", DUAL_ROWS[:2])
    ds = build_datasets(
        _spec(path), student_tok, teacher_tok, dual=True, aligners={"eta": nothing, "mined": in_order}
    )
    batch = ds.collator([ds.train[0], ds.train[1]])
    assert (batch["eta_teacher_index"] == -1).all()
    mined = batch["mined_teacher_index"]
    for i in range(2):
        s_valid = (batch["labels"][i] != IGNORE_INDEX).nonzero().flatten()
        t_valid = (batch["teacher_labels"][i] != IGNORE_INDEX).nonzero().flatten()
        n = min(len(s_valid), len(t_valid))
        assert mined[i, s_valid[:n]].tolist() == t_valid[:n].tolist()
        assert (mined[i][batch["labels"][i] == IGNORE_INDEX] == -1).all()  # prompt and padding positions
    with pytest.raises(ValueError, match="teacher tokenizer"):
        build_datasets(_spec(path), student_tok, dual=True)
    single = build_datasets(_spec(path), student_tok, teacher_tok, dual=False)
    assert set(single.collator([single.train[0]])) == {"input_ids", "labels", "attention_mask"}


def test_default_mined_alignment(tmp_path, student_tok, teacher_tok):
    path = _jsonl(tmp_path / "d.jsonl", DUAL_ROWS)
    ds = build_datasets(_spec(path), student_tok, teacher_tok, dual=True)
    batch = ds.collator([ds.train[i] for i in range(3)])
    mined = batch["mined_teacher_index"]
    assert mined.shape == batch["input_ids"].shape
    assert (mined[batch["labels"] == IGNORE_INDEX] == -1).all()
    valid = mined >= 0
    assert (
        valid.any() and (batch["teacher_labels"].gather(1, mined.clamp(min=0))[valid] != IGNORE_INDEX).all()
    )


def test_json_array_files_and_batched_encoding_match_single(tmp_path, student_tok, teacher_tok):
    path = tmp_path / "d.json"
    path.write_text(
        json.dumps([{"prompt": "P {x}", "output": "R"}, {"prompt": "Q", "output": "S", "references": ["S"]}])
    )
    recs = load_records(path)
    assert [r.source for r in recs] == ["d.json record 1", "d.json record 2"] and recs[1].references == ["S"]
    path.write_text(json.dumps({"prompt": "P"}))
    with pytest.raises(DataError, match="list of objects"):
        load_records(path)
    prompts = ["What is the capital of France?", "Hi", " ".join(["sea"] * 50)]
    responses = ["Paris.", "Hello there, the sky.", "Waves."]
    for tok in (student_tok, teacher_tok):
        batched = encode_examples(prompts, responses, tok, max_prompt_length=20, max_length=30)
        single = [
            encode_example(p, r, tok, max_prompt_length=20, max_length=30)
            for p, r in zip(prompts, responses, strict=True)
        ]
        assert batched == single
