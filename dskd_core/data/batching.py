"""Pre-tokenised datasets, the padding collator and the resumable example order.

The collator pads every batch to its own longest example (right padding), never to `max_length`. Student keys
are padded to the student length `T_s`, teacher keys to the teacher length `T_t`; the alignment indices live on
student positions, so they are `[B, T_s]` and padded with -1.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from dskd_core.data.encode import IGNORE_INDEX

# key -> (side, pad value); a pad value of None means the side's pad token id.
_PADDING: dict[str, tuple[str, int | None]] = {
    "input_ids": ("student", None),
    "labels": ("student", IGNORE_INDEX),
    "eta_teacher_index": ("student", -1),
    "mined_teacher_index": ("student", -1),
    "teacher_input_ids": ("teacher", None),
    "teacher_labels": ("teacher", IGNORE_INDEX),
}


class TokenizedDataset(Dataset):
    """Examples tokenised once, in record order. Each example is a dict of equal-side-length int lists.

    `record_indices[i]` is the index (in the record list given to the builder) of example i, so evaluation and
    on-policy sampling can go back to the prompt; `n_dropped` counts records dropped by truncation.
    """

    def __init__(
        self, examples: list[dict[str, list[int]]], record_indices: list[int], n_dropped: int = 0
    ) -> None:
        if len(examples) != len(record_indices):
            raise ValueError("one record index per example")
        self.examples = examples
        self.record_indices = record_indices
        self.n_dropped = n_dropped

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.examples[i]

    @property
    def dual(self) -> bool:
        return bool(self.examples) and "teacher_input_ids" in self.examples[0]

    def num_label_tokens(self, side: str = "student") -> int:
        key = "labels" if side == "student" else "teacher_labels"
        return sum(sum(1 for v in ex[key] if v != IGNORE_INDEX) for ex in self.examples)


@dataclass(frozen=True)
class Collator:
    """Stacks examples into right-padded tensors (see docs/design.md, "Batch format")."""

    pad_id: int
    teacher_pad_id: int | None = None

    @classmethod
    def from_tokenizers(cls, student_tokenizer: Any, teacher_tokenizer: Any | None = None) -> Collator:
        return cls(
            _pad_id(student_tokenizer), None if teacher_tokenizer is None else _pad_id(teacher_tokenizer)
        )

    def __call__(self, examples: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        batch: dict[str, torch.Tensor] = {}
        lengths = {
            "student": [len(ex["input_ids"]) for ex in examples],
            "teacher": [len(ex["teacher_input_ids"]) for ex in examples]
            if "teacher_input_ids" in examples[0]
            else [],
        }
        for key in examples[0]:
            side, pad = _PADDING[key]
            if pad is None:
                pad = self.pad_id if side == "student" else self.teacher_pad_id
                if pad is None:
                    raise ValueError(
                        "a dual batch needs the teacher's pad id: build the Collator with both tokenizers"
                    )
            width = max(lengths[side])
            rows = [ex[key] + [pad] * (width - len(ex[key])) for ex in examples]
            batch[key] = torch.tensor(rows, dtype=torch.long)
        batch["attention_mask"] = _mask(lengths["student"])
        if lengths["teacher"]:
            batch["teacher_attention_mask"] = _mask(lengths["teacher"])
        return batch


def _mask(lengths: list[int]) -> torch.Tensor:
    width = max(lengths)
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token")
    return pad


def epoch_order(epoch: int, seed: int, num_examples: int, *, shuffle: bool = True) -> list[int]:
    """The example order of one epoch: a permutation that depends only on (epoch, seed, num_examples).

    The trainer recomputes it after a resume and skips the examples already consumed.
    """
    if not shuffle:
        return list(range(num_examples))
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)  # distinct stream per (seed, epoch)
    return torch.randperm(num_examples, generator=gen).tolist()


class ResumableSampler(Sampler[int]):
    """Yields `epoch_order(epoch, seed, n)` from position `start` on.

    Resume: `set_epoch(epoch, start=batches_done * batch_size)` (or `load_state_dict`). The trainer, not the
    sampler, knows how many examples were consumed (a DataLoader prefetches ahead of training).
    """

    def __init__(self, num_examples: int, *, seed: int, shuffle: bool = True) -> None:
        self.num_examples = num_examples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.num_examples:
            raise ValueError(f"start={start} outside 0..{self.num_examples}")
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        order = epoch_order(self.epoch, self.seed, self.num_examples, shuffle=self.shuffle)
        return iter(order[self.start :])

    def __len__(self) -> int:
        return self.num_examples - self.start

    def state_dict(self) -> dict[str, int | bool]:
        return {"epoch": self.epoch, "start": self.start, "seed": self.seed, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seed"] != self.seed or state["shuffle"] != self.shuffle:
            raise ValueError("the saved data order used another seed or shuffle setting")
        self.set_epoch(int(state["epoch"]), int(state["start"]))
