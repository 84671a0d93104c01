"""Sequence-level KD (methods.md §4): the teacher writes a response for every training prompt, then the student
is trained on those responses with plain CE (the `seqkd` distiller is SFT's).

Generation is resumable. Each batch of responses is appended to a JSONL file (`distill.seqkd_data_path`, by
default `run_dir/seqkd/train.jsonl`) and fsynced; on restart the records already there are skipped, and a torn
last line (a crash mid-write) is cut off. Lines keep the data layout (`prompt`, `context`, `response`), so the
file also reads as a dataset of its own, plus `index` (the record's position in the training split),
`prompt_sha256` (the rendered prompt, to refuse a file written for other data) and `finished` (the teacher
emitted EOS before the token budget ran out).

Decoding: greedy (the usual SeqKD choice, and deterministic, so a resumed file equals an uninterrupted one),
prompts truncated like the training data, at most `max_length − max_prompt_length` new tokens (the response room
the training keeps), in batches of `evaluation.batch_size`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dskd_core.data import Collator, Datasets, Encoder, Record, format_prompt, split_records
from dskd_core.generation import generate_ids
from dskd_core.progress import CancelToken, NeverCancel, NullSink, ProgressEvent, ProgressSink
from dskd_core.spec import JobSpec


class GenerationCancelled(Exception):
    """The caller's cancel token fired during teacher generation (what was generated stays on disk)."""


def seqkd_path(spec: JobSpec, run_dir: str | Path | None) -> Path:
    """Where the teacher's responses are stored: `distill.seqkd_data_path`, else `run_dir/seqkd/train.jsonl`."""
    if spec.distill.seqkd_data_path:
        return Path(spec.distill.seqkd_data_path)
    if run_dir is None:
        raise ValueError(
            "seqkd needs a run directory or distill.seqkd_data_path to store the teacher's responses"
        )
    return Path(run_dir) / "seqkd" / "train.jsonl"


def prompt_sha256(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def read_done(path: Path) -> dict[int, dict[str, Any]]:
    """The complete lines of a generation file by record index; a torn last line is removed from the file."""
    done: dict[int, dict[str, Any]] = {}
    if not path.exists():
        return done
    good = 0
    with open(path, "rb") as f:
        for raw in f:
            try:
                if not raw.endswith(b"\n"):
                    raise ValueError("torn line")
                line = json.loads(raw)
            except ValueError:
                break
            done[int(line["index"])] = line
            good += len(raw)
    if good < path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good)
    return done


def generate_teacher_responses(
    records: Sequence[Record],
    teacher: Any,
    teacher_tokenizer: Any,
    path: str | Path,
    *,
    template: str,
    max_prompt_tokens: int,
    max_new_tokens: int,
    batch_size: int,
    sink: ProgressSink | None = None,
    cancel: CancelToken | None = None,
) -> list[str]:
    """The teacher's response to every record, in record order, generating only the ones `path` lacks."""
    sink, cancel = sink or NullSink(), cancel or NeverCancel()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prompts = [format_prompt(r, template, teacher_tokenizer) for r in records]
    done = read_done(path)
    for index, line in done.items():
        if index >= len(records) or line.get("prompt_sha256") != prompt_sha256(prompts[index]):
            raise ValueError(
                f"{path} holds teacher responses for other prompts (record {index} differs); "
                "delete it or point distill.seqkd_data_path elsewhere"
            )
    todo = [i for i in range(len(records)) if i not in done]
    with open(path, "a", encoding="utf-8") as out:
        for start in range(0, len(todo), batch_size):
            if cancel.cancelled():
                raise GenerationCancelled(f"seqkd generation cancelled after {len(done)} of {len(records)}")
            chunk = todo[start : start + batch_size]
            generations = generate_ids(
                teacher,
                teacher_tokenizer,
                [prompts[i] for i in chunk],
                max_new_tokens=max_new_tokens,
                do_sample=False,
                batch_size=batch_size,
                max_prompt_tokens=max_prompt_tokens,
            )
            for i, g in zip(chunk, generations, strict=True):
                r = records[i]
                line = {
                    "index": i,
                    "prompt": r.prompt,
                    **({"context": r.context} if r.context else {}),
                    "response": g.text,
                    "finished": g.finished,
                    "prompt_sha256": prompt_sha256(prompts[i]),
                }
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
                done[i] = line
            out.flush()
            os.fsync(out.fileno())  # a restart must find every line it was told about
            sink.emit(
                ProgressEvent(
                    "log",
                    metrics={"seqkd_generated": float(len(done)), "seqkd_total": float(len(records))},
                    message=f"seqkd: {len(done)}/{len(records)} teacher responses",
                )
            )
    return [str(done[i]["response"]) for i in range(len(records))]


def ensure_teacher_responses(
    spec: JobSpec,
    run_dir: str | Path | None,
    device: Any,
    *,
    sink: ProgressSink | None = None,
    cancel: CancelToken | None = None,
) -> Path:
    """Load the teacher, generate (or finish generating) its responses to the training prompts, free it."""
    from dskd_core import models

    path = seqkd_path(spec, run_dir)
    train_records, _ = split_records(spec)
    if len(read_done(path)) >= len(train_records):
        return path
    t = spec.training
    teacher_tokenizer = models.load_tokenizer(spec.teacher)
    teacher = models.load_model(spec.teacher, trainable=False, device=device)
    generate_teacher_responses(
        train_records,
        teacher,
        teacher_tokenizer,
        path,
        template=spec.data.prompt_template,
        max_prompt_tokens=t.max_prompt_length,
        max_new_tokens=t.max_length - t.max_prompt_length,
        batch_size=spec.evaluation.batch_size,
        sink=sink,
        cancel=cancel,
    )
    return path


def seqkd_datasets(spec: JobSpec, student_tokenizer: Any, path: str | Path) -> Datasets:
    """The training split with the teacher's responses in place of the references; the dev split unchanged."""
    train_records, dev_records = split_records(spec)
    done = read_done(Path(path))
    missing = [i for i in range(len(train_records)) if i not in done]
    if missing:
        raise ValueError(f"{path}: {len(missing)} training prompts have no teacher response yet")
    generated = [
        dataclasses.replace(r, response=str(done[i]["response"]), source=f"{path} index {i}")
        for i, r in enumerate(train_records)
    ]
    encoder = Encoder(
        template=spec.data.prompt_template,
        max_prompt_length=spec.training.max_prompt_length,
        max_length=spec.training.max_length,
        student_tokenizer=student_tokenizer,
    )
    train = encoder.dataset(generated, name="seqkd train")
    dev = encoder.dataset(dev_records, name="dev") if dev_records else None
    return Datasets(train, dev, generated, dev_records, Collator.from_tokenizers(student_tokenizer))
