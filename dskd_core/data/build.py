"""From a job spec to tokenised train/dev datasets, single or dual (cross-vocabulary) tokenisation.

Dual mode tokenises every record with the student's and the teacher's tokenizer (each renders its own chat
template when the template is "chat"; same truncation rule, EOS on both) and computes, once, the alignment of
the two response label spans: for each student label position, the teacher label position it is aligned with,
or -1 (`eta_teacher_index` for exact token alignment, `mined_teacher_index` for the edit-distance alignment).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dskd_core.data.batching import Collator, TokenizedDataset
from dskd_core.data.encode import adds_bos, encode_example, response_span
from dskd_core.data.records import DataError, FieldNames, Record, load_records, read_records, split_dev
from dskd_core.data.templates import format_prompt
from dskd_core.spec import JobSpec

log = logging.getLogger(__name__)

ALIGNMENTS = ("eta", "mined")
DEV_SPLITS = ("validation", "dev", "valid", "test")


class PairAligner(Protocol):
    """Aligns a teacher and a student response label span (token id lists, EOS included).

    Each method returns, for every student token k, the index j of the teacher token aligned with it, or -1.
    """

    def eta(self, teacher_ids: Sequence[int], student_ids: Sequence[int]) -> Sequence[int]: ...

    def mined(self, teacher_ids: Sequence[int], student_ids: Sequence[int]) -> Sequence[int]: ...


def default_aligner(student_tokenizer: Any, teacher_tokenizer: Any) -> PairAligner:
    """The alignment library's aligner for this tokenizer pair (imported lazily: it is only needed in dual mode)."""
    from dskd_core.alignment import TokenAligner

    return TokenAligner(teacher_tokenizer, student_tokenizer)


@dataclass
class Encoder:
    """Renders and tokenises records for one tokenizer (the student), or two (dual mode)."""

    template: str
    max_prompt_length: int
    max_length: int
    student_tokenizer: Any
    teacher_tokenizer: Any | None = None
    aligner: PairAligner | None = None
    alignments: tuple[str, ...] = ALIGNMENTS

    def __post_init__(self) -> None:
        self._student_bos = adds_bos(self.student_tokenizer)
        self._teacher_bos = adds_bos(self.teacher_tokenizer) if self.teacher_tokenizer is not None else False
        if self.teacher_tokenizer is not None and self.alignments and self.aligner is None:
            self.aligner = default_aligner(self.student_tokenizer, self.teacher_tokenizer)
        unknown = set(self.alignments) - set(ALIGNMENTS)
        if unknown:
            raise ValueError(f"unknown alignments {sorted(unknown)}; choose from {ALIGNMENTS}")

    def encode(self, record: Record) -> dict[str, list[int]] | None:
        """One example's lists, or None when truncation leaves no response label on either side."""
        student = self._encode_side(record, self.student_tokenizer, self._student_bos)
        if student is None or self.teacher_tokenizer is None:
            return student
        teacher = self._encode_side(record, self.teacher_tokenizer, self._teacher_bos)
        if teacher is None:
            return None
        example = {**student, "teacher_input_ids": teacher["input_ids"], "teacher_labels": teacher["labels"]}
        s_start, s_span = response_span(student["labels"])
        t_start, t_span = response_span(teacher["labels"])
        for name in self.alignments:
            pairs = list(getattr(self.aligner, name)(t_span, s_span))
            if len(pairs) != len(s_span):
                raise RuntimeError(
                    f"{name} alignment returned {len(pairs)} indices for {len(s_span)} student tokens"
                )
            index = [-1] * len(student["input_ids"])
            for k, j in enumerate(pairs):
                if j >= 0:
                    index[s_start + k] = t_start + j
            example[f"{name}_teacher_index"] = index
        return example

    def _encode_side(self, record: Record, tokenizer: Any, bos: bool) -> dict[str, list[int]] | None:
        prompt = format_prompt(record, self.template, tokenizer)
        return encode_example(
            prompt,
            record.response,
            tokenizer,
            max_prompt_length=self.max_prompt_length,
            max_length=self.max_length,
            bos=bos,
        )

    def dataset(self, records: Sequence[Record], *, name: str = "data") -> TokenizedDataset:
        examples, kept = [], []
        for i, record in enumerate(records):
            example = self.encode(record)
            if example is not None:
                examples.append(example)
                kept.append(i)
        dropped = len(records) - len(kept)
        if dropped:
            log.warning(
                "%s: %d of %d examples dropped (no response token left after truncation)",
                name,
                dropped,
                len(records),
            )
        if not examples:
            raise DataError(
                f"{name}: every example lost its response to truncation; raise training.max_length"
            )
        return TokenizedDataset(examples, kept, dropped)


@dataclass
class Datasets:
    train: TokenizedDataset
    dev: TokenizedDataset | None
    train_records: list[Record]
    dev_records: list[Record]
    collator: Collator


def split_records(spec: JobSpec, *, split_seed: int = 0) -> tuple[list[Record], list[Record]]:
    """(train, dev) records per the DataSpec: dev from dev_path, else a seeded dev_ratio hold-out, else none.

    The hold-out uses `split_seed`, not the training seed, so runs with different seeds share one dev set;
    `max_examples` caps the training part after the split, so the dev set does not depend on it either.
    """
    data = spec.data
    records = load_records(data, split=data.split)
    if data.dev_path is not None:
        train, dev = records, _load_dev(Path(data.dev_path), FieldNames.from_spec(data))
    else:
        train, dev = split_dev(records, data.dev_ratio, seed=split_seed)
    if data.max_examples is not None:
        train = train[: data.max_examples]
    if data.dev_max_examples is not None:
        dev = dev[: data.dev_max_examples]
    return train, dev


def _load_dev(path: Path, fields: FieldNames) -> list[Record]:
    """A dev file, or the first dev-like split of a DatasetDict directory."""
    if path.is_dir() and (path / "dataset_dict.json").exists():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        name = next((s for s in DEV_SPLITS if s in splits), splits[0] if len(splits) == 1 else None)
        if name is None:
            raise DataError(
                f"{path}: no dev split (looked for {', '.join(DEV_SPLITS)}; found {', '.join(splits)})"
            )
        return read_records(path, fields, split=name)
    return read_records(path, fields)


def build_datasets(
    spec: JobSpec,
    student_tokenizer: Any,
    teacher_tokenizer: Any | None = None,
    *,
    dual: bool,
    aligner: PairAligner | None = None,
    alignments: tuple[str, ...] = ALIGNMENTS,
    split_seed: int = 0,
) -> Datasets:
    """Load, split and tokenise the job's data. `dual=True` needs the teacher tokenizer (cross-vocabulary)."""
    if dual and teacher_tokenizer is None:
        raise ValueError("dual tokenisation needs the teacher tokenizer")
    train_records, dev_records = split_records(spec, split_seed=split_seed)
    encoder = Encoder(
        template=spec.data.prompt_template,
        max_prompt_length=spec.training.max_prompt_length,
        max_length=spec.training.max_length,
        student_tokenizer=student_tokenizer,
        teacher_tokenizer=teacher_tokenizer if dual else None,
        aligner=aligner,
        alignments=alignments if dual else (),
    )
    train = encoder.dataset(train_records, name="train")
    dev = encoder.dataset(dev_records, name="dev") if dev_records else None
    collator = Collator.from_tokenizers(student_tokenizer, teacher_tokenizer if dual else None)
    return Datasets(train, dev, train_records, dev_records, collator)
