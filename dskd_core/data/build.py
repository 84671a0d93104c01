"""From a job spec to tokenised train/dev datasets, single or dual (cross-vocabulary) tokenisation.

Dual mode tokenises every record with the student's and the teacher's tokenizer (each renders its own chat
template when the template is "chat"; same truncation rule, EOS on both) and computes, once, the alignment of
the two response label spans: for each student label position, the teacher label position it is aligned with,
or -1 (`eta_teacher_index` for exact token alignment, `mined_teacher_index` for the edit-distance alignment).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from dskd_core.data.batching import Collator, TokenizedDataset
from dskd_core.data.encode import IGNORE_INDEX, adds_bos, encode_examples
from dskd_core.data.records import DataError, FieldNames, Record, load_records, read_records, split_dev
from dskd_core.data.templates import format_prompt
from dskd_core.spec import JobSpec

log = logging.getLogger(__name__)

ALIGNMENTS = ("eta", "mined")
DEV_SPLITS = ("validation", "dev", "valid", "test")


# (teacher_labels [B, T_t], student_labels [B, T_s], right-padded with -100) -> [B, T_s] int array: for each student
# label position the aligned teacher label position, else -1.
AlignFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

ENCODE_CHUNK = 512  # examples per tokenizer/alignment call: vectorised over the chunk, bounded memory


def default_aligners(
    student_tokenizer: Any, teacher_tokenizer: Any, names: Sequence[str]
) -> dict[str, AlignFn]:
    """The alignment library's functions for this tokenizer pair (imported lazily: only dual mode needs them)."""
    from dskd_core.alignment import eta_teacher_index, mined_teacher_index

    index_fns = {"eta": eta_teacher_index, "mined": mined_teacher_index}
    aligners: dict[str, AlignFn] = {}
    for name in names:
        if name not in index_fns:
            raise ValueError(f"unknown alignment '{name}'; choose from {ALIGNMENTS}")
        index_fn = index_fns[name]
        aligners[name] = partial(_call_index_fn, index_fn, teacher_tokenizer, student_tokenizer)
    return aligners


def _call_index_fn(
    fn: Any, teacher_tokenizer: Any, student_tokenizer: Any, t: np.ndarray, s: np.ndarray
) -> np.ndarray:
    return np.asarray(fn(t, s, teacher_tokenizer, student_tokenizer))


@dataclass
class Encoder:
    """Renders and tokenises records for the student, or for the student and the teacher (dual mode).

    In dual mode `aligners` maps each name of `alignments` to its index function; by default the alignment
    library's (`default_aligners`).
    """

    template: str
    max_prompt_length: int
    max_length: int
    student_tokenizer: Any
    teacher_tokenizer: Any | None = None
    alignments: tuple[str, ...] = ALIGNMENTS
    aligners: dict[str, AlignFn] | None = None

    def __post_init__(self) -> None:
        unknown = set(self.alignments) - set(ALIGNMENTS)
        if unknown:
            raise ValueError(f"unknown alignments {sorted(unknown)}; choose from {ALIGNMENTS}")
        self._student_bos = adds_bos(self.student_tokenizer)
        self._teacher_bos = adds_bos(self.teacher_tokenizer) if self.teacher_tokenizer is not None else False
        if self.teacher_tokenizer is None:
            self.alignments = ()
        elif self.aligners is None:
            self.aligners = default_aligners(self.student_tokenizer, self.teacher_tokenizer, self.alignments)
        missing = set(self.alignments) - set(self.aligners or {})
        if missing:
            raise ValueError(f"no aligner given for {sorted(missing)}")

    def encode(self, record: Record) -> dict[str, list[int]] | None:
        """One example's lists (with alignment indices in dual mode), or None when truncation leaves no
        response label on either side."""
        return self.encode_many([record])[0]

    def encode_many(self, records: Sequence[Record]) -> list[dict[str, list[int]] | None]:
        """`encode` over many records: tokenised and aligned per chunk of `ENCODE_CHUNK`."""
        out: list[dict[str, list[int]] | None] = []
        for begin in range(0, len(records), ENCODE_CHUNK):
            chunk = self._tokenize(records[begin : begin + ENCODE_CHUNK])
            self._add_alignments([ex for ex in chunk if ex is not None])
            out += chunk
        return out

    def dataset(self, records: Sequence[Record], *, name: str = "data") -> TokenizedDataset:
        """Tokenise every record once; examples without a response label are dropped, counted and logged."""
        encoded = self.encode_many(records)
        kept = [i for i, ex in enumerate(encoded) if ex is not None]
        dropped = len(records) - len(kept)
        if dropped:
            log.warning(
                "%s: %d of %d examples dropped (no response token left after truncation)",
                name,
                dropped,
                len(records),
            )
        if not kept:
            raise DataError(
                f"{name}: every example lost its response to truncation; raise training.max_length"
            )
        return TokenizedDataset([encoded[i] for i in kept], kept, dropped)

    def _tokenize(self, records: Sequence[Record]) -> list[dict[str, list[int]] | None]:
        student = self._encode_side(records, self.student_tokenizer, self._student_bos)
        if self.teacher_tokenizer is None:
            return student
        teacher = self._encode_side(records, self.teacher_tokenizer, self._teacher_bos)
        return [
            None
            if s is None or t is None
            else {**s, "teacher_input_ids": t["input_ids"], "teacher_labels": t["labels"]}
            for s, t in zip(student, teacher, strict=True)
        ]

    def _encode_side(
        self, records: Sequence[Record], tokenizer: Any, bos: bool
    ) -> list[dict[str, list[int]] | None]:
        return encode_examples(
            [format_prompt(record, self.template, tokenizer) for record in records],
            [record.response for record in records],
            tokenizer,
            max_prompt_length=self.max_prompt_length,
            max_length=self.max_length,
            bos=bos,
        )

    def _add_alignments(self, examples: list[dict[str, list[int]]]) -> None:
        """Adds `<name>_teacher_index` to each example, aligning a whole chunk per library call."""
        if not self.alignments or not examples:
            return
        teacher_labels = _pad_rows([ex["teacher_labels"] for ex in examples], IGNORE_INDEX)
        student_labels = _pad_rows([ex["labels"] for ex in examples], IGNORE_INDEX)
        for name in self.alignments:
            index = np.asarray(self.aligners[name](teacher_labels, student_labels))
            if index.shape != student_labels.shape:
                raise RuntimeError(
                    f"{name} alignment returned shape {index.shape}, expected {student_labels.shape}"
                )
            for row, ex in zip(index, examples, strict=True):
                ex[f"{name}_teacher_index"] = row[: len(ex["labels"])].tolist()


def _pad_rows(rows: list[list[int]], value: int) -> np.ndarray:
    out = np.full((len(rows), max(len(r) for r in rows)), value, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


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
    if data.dev_dataset_id is not None:
        raise DataError(
            "data.dev_dataset_id is not resolved (the service turns it into data.dev_path before training; "
            "the command line takes data.dev_path)"
        )
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
    aligners: dict[str, AlignFn] | None = None,
    alignments: tuple[str, ...] = ALIGNMENTS,
    split_seed: int = 0,
) -> Datasets:
    """Load, split and tokenise the job's data.

    `dual=True` (cross-vocabulary methods) needs the teacher tokenizer and adds the teacher side and the
    `alignments` indices; pass only the alignment the method uses to save time. `aligners` overrides the library's.
    """
    if dual and teacher_tokenizer is None:
        raise ValueError("dual tokenisation needs the teacher tokenizer")
    train_records, dev_records = split_records(spec, split_seed=split_seed)
    encoder = Encoder(
        template=spec.data.prompt_template,
        max_prompt_length=spec.training.max_prompt_length,
        max_length=spec.training.max_length,
        student_tokenizer=student_tokenizer,
        teacher_tokenizer=teacher_tokenizer if dual else None,
        alignments=alignments if dual else (),
        aligners=aligners,
    )
    train = encoder.dataset(train_records, name="train")
    dev = encoder.dataset(dev_records, name="dev") if dev_records else None
    collator = Collator.from_tokenizers(student_tokenizer, teacher_tokenizer if dual else None)
    return Datasets(train, dev, train_records, dev_records, collator)
