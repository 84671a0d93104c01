"""SeqKD: resumable teacher generation, and training on the generated responses."""

from __future__ import annotations

import json

import pytest

import dskd_core.seqkd as seqkd
from dskd_core.data import IGNORE_INDEX
from dskd_core.spec import JobSpec
from dskd_core.train import make_accelerator, prepare, run_job


def make_spec(world, data_path) -> JobSpec:
    return JobSpec.model_validate(
        {
            "student": {"name_or_path": str(world.student)},
            "teacher": {"name_or_path": str(world.teacher)},
            "data": {"path": str(world.train), "max_examples": 6},
            "distill": {"method": "seqkd", "seqkd_data_path": str(data_path)},
            "training": {"max_steps": 2, "batch_size": 3, "max_length": 40, "max_prompt_length": 32},
            "evaluation": {"batch_size": 2},
        }
    )


class CancelAfter:
    def __init__(self, checks: int) -> None:
        self.checks = checks

    def cancelled(self) -> bool:
        self.checks -= 1
        return self.checks < 0


class Counting:
    """Wraps generate_ids to count the prompts it is asked for."""

    def __init__(self) -> None:
        self.prompts = 0
        self.real = seqkd.generate_ids

    def __call__(self, model, tokenizer, prompts, **kw):
        self.prompts += len(prompts)
        return self.real(model, tokenizer, prompts, **kw)


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_generation_resumes_and_training_reads_the_generated_responses(toy_world, tmp_path, monkeypatch):
    path = tmp_path / "gen" / "train.jsonl"
    spec = make_spec(toy_world, path)
    counter = Counting()
    monkeypatch.setattr(seqkd, "generate_ids", counter)

    interrupted = run_job(spec, tmp_path / "run", cancel=CancelAfter(1))  # one batch of 2, then cancel
    assert interrupted.status == "cancelled" and counter.prompts == 2
    assert sorted(line["index"] for line in lines(path)) == [0, 1]
    with open(path, "a") as f:
        f.write('{"index": 2, "prom')  # a torn line from a crash mid-write is dropped on restart

    events = []
    seqkd.ensure_teacher_responses(
        spec, tmp_path / "run", "cpu", sink=type("S", (), {"emit": events.append})()
    )
    assert counter.prompts == 6  # only the 4 missing prompts were generated
    written = lines(path)
    assert sorted(line["index"] for line in written) == list(range(6))  # each prompt once
    assert [e.metrics["seqkd_generated"] for e in events] == [4.0, 6.0]

    # Resumed generation equals an uninterrupted one (greedy decoding).
    straight = tmp_path / "straight.jsonl"
    seqkd.ensure_teacher_responses(make_spec(toy_world, straight), None, "cpu")
    by_index = {line["index"]: line["response"] for line in written}
    assert [by_index[i] for i in range(6)] == [line["response"] for line in lines(straight)]

    # The training data's responses are the generated ones, token for token after decoding.
    setup = prepare(spec, make_accelerator("fp32", "cpu").device)
    assert [r.response for r in setup.train_records] == [by_index[i] for i in range(6)]
    assert setup.teacher is None  # the loss needs no teacher
    tok = setup.student_tokenizer
    for example, index in zip(setup.train_set.examples, setup.train_set.record_indices, strict=True):
        labels = [t for t in example["labels"] if t != IGNORE_INDEX]
        if labels[-1] == tok.eos_token_id:
            assert tok.decode(labels[:-1], skip_special_tokens=True) == by_index[index]
        else:  # truncated to max_length: a prefix of the generated response
            assert by_index[index].startswith(tok.decode(labels, skip_special_tokens=True).rstrip())

    before = counter.prompts
    result = run_job(spec, tmp_path / "run")  # the file is complete: training starts without generating
    assert result.status == "completed" and result.steps == 2 and counter.prompts == before


def test_a_file_written_for_other_prompts_is_refused(toy_world, tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"index": 0, "prompt_sha256": "0" * 64, "response": "x"}) + "\n")
    with pytest.raises(ValueError, match="other prompts"):
        seqkd.ensure_teacher_responses(make_spec(toy_world, path), None, "cpu")
