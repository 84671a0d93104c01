"""Exact Token Alignment (methods.md §3.3): pair the positions of two tokenisations that predict the same token
after the same text.

Each token is reduced to an *alignment unit*: its canonical bytes with the space bytes removed (so the
SentencePiece dummy-prefix space cannot shift every comparison after it), or, for a special token, a marker of
length 1 that equals only the same role on the other side (EOS↔EOS, BOS↔BOS, PAD↔PAD, equal added-special
content; UNK and unused ids equal nothing). Being one position wide, EOS pairs with EOS even when one side has
an extra whitespace-only token before it; the price is that a special token present on one side only shifts
every later offset of that side, so callers put specials at the same places on both sides (the data pipeline
appends EOS to both responses and nothing else special enters the labels).

Two forms, proven equal and tested on random cases:

* `exact_alignment` — the reference two-pointer walk, one Python step per token.
* `ExactAligner` / `align_batch` / `eta_teacher_index` — the training path over a whole batch, with no per-token
  Python: by default the same walk compiled with numba (one pass, `_kernels.two_pointer_batch`); `backend="numpy"`
  is a pure-numpy form that needs no compiler and is slower (several array passes and a sorted search; see
  bench/alignment.py). The numpy form rests on this argument. Let each side's tokens have start/end offsets in the concatenated (space-stripped) units.
  The two-pointer walk is a merge of two partitions of the same byte line: it visits exactly the pairs of tokens
  whose intervals overlap, and records a pair iff start, end and unit coincide. Zero-length tokens (a lone `Ġ`
  or `▁`) sit *at* an offset; a run of them is entered by both pointers together (the tokens before end there on
  both sides) and walked in lockstep, so the k-th of one run meets the k-th of the other. Hence: teacher token i
  and student token j are paired iff (start, end, rank-in-zero-length-run) coincide and their units are equal.
  Those triples are unique and increasing on each side, so one sorted search joins them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from dskd_core.alignment.canonical import SPACE, TokenTable, pair_cached, token_table

IGNORE_INDEX = -100
NEVER_EQUAL_ROLES = frozenset({"unk", "unused"})


@dataclass(frozen=True)
class SpecialUnit:
    """The alignment unit of a special token: one position wide, equal only to the same role."""

    role: str

    def __len__(self) -> int:
        return 1

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SpecialUnit) and other.role == self.role and self.role not in NEVER_EQUAL_ROLES
        )

    def __hash__(self) -> int:
        return hash(self.role)


Unit = bytes | SpecialUnit


def alignment_unit(table: TokenTable, token_id: int) -> Unit:
    """Canonical bytes without space bytes, or a `SpecialUnit` for a special (or unused) id."""
    data = table.token_bytes[token_id]
    if data is None:
        return SpecialUnit(table.roles.get(token_id, "unused"))
    return data.replace(bytes([SPACE]), b"")


def two_pointer_alignment(
    teacher_units: Sequence[Unit], student_units: Sequence[Unit]
) -> list[tuple[int, int]]:
    """The §3.3 walk. `pa`/`pb` are the lengths of the prefixes consumed before the current tokens; over the same
    text equal lengths mean equal prefixes. The side whose prefix *including* its current token is shorter
    advances; equal → both advance (a common boundary, where the walk re-synchronises)."""
    pairs: list[tuple[int, int]] = []
    i = j = pa = pb = 0
    while i < len(teacher_units) and j < len(student_units):
        ea, eb = pa + len(teacher_units[i]), pb + len(student_units[j])
        if ea < eb:
            pa, i = ea, i + 1
        elif eb < ea:
            pb, j = eb, j + 1
        else:
            if pa == pb and teacher_units[i] == student_units[j]:
                pairs.append((i, j))
            pa, pb, i, j = ea, eb, i + 1, j + 1
    return pairs


def exact_alignment(
    teacher_ids: Sequence[int], student_ids: Sequence[int], teacher_tokenizer: Any, student_tokenizer: Any
) -> list[tuple[int, int]]:
    """Reference exact alignment of one sequence: (teacher_position, student_position) pairs, in order."""
    teacher, student = token_table(teacher_tokenizer), token_table(student_tokenizer)
    return two_pointer_alignment(
        [alignment_unit(teacher, int(i)) for i in teacher_ids],
        [alignment_unit(student, int(i)) for i in student_ids],
    )


def _unit_arrays(teacher: TokenTable, student: TokenTable) -> tuple[np.ndarray, ...]:
    """Per-id unit length and an integer unit key, interned over both vocabularies (equal key ⇔ equal unit)."""
    interned: dict[Any, int] = {}
    arrays = []
    for side, table in (("teacher", teacher), ("student", student)):
        lengths = np.ones(table.size, dtype=np.int64)
        keys = np.empty(table.size, dtype=np.int64)
        for token_id in range(table.size):
            unit = alignment_unit(table, token_id)
            if isinstance(unit, SpecialUnit):
                # Specials intern on ("special", role); roles that equal nothing get a side-and-id-specific key.
                name = ("special", unit.role) if unit.role not in NEVER_EQUAL_ROLES else (side, token_id)
                keys[token_id] = -1 - interned.setdefault(name, len(interned))
            else:
                lengths[token_id] = len(unit)
                keys[token_id] = interned.setdefault(unit, len(interned))
        arrays += [lengths, keys]
    return tuple(arrays)


class ExactAligner:
    """The vectorised exact alignment for one (teacher, student) tokenizer pair. Get it with `exact_aligner`."""

    def __init__(self, teacher: TokenTable, student: TokenTable, backend: str = "numba") -> None:
        if backend not in ("numba", "numpy"):
            raise ValueError(f"unknown backend {backend!r}; choose 'numba' or 'numpy'")
        self.backend = backend
        self.teacher_lengths, self.teacher_keys, self.student_lengths, self.student_keys = _unit_arrays(
            teacher, student
        )

    def align_batch(self, teacher_seqs: Sequence[Any], student_seqs: Sequence[Any]) -> list[np.ndarray]:
        """Per example, an int64 array [K, 2] of (teacher_position, student_position) pairs."""
        if len(teacher_seqs) != len(student_seqs):
            raise ValueError(
                f"{len(teacher_seqs)} teacher sequences but {len(student_seqs)} student sequences"
            )
        t_ids, t_seq, t_first = _flatten(teacher_seqs)
        s_ids, s_seq, s_first = _flatten(student_seqs)
        ti, sj = self._match(t_ids, t_seq, s_ids, s_seq, len(teacher_seqs))
        pairs = np.stack([ti - t_first[t_seq[ti]], sj - s_first[s_seq[sj]]], axis=1)
        return np.split(pairs, np.searchsorted(t_seq[ti], np.arange(1, len(teacher_seqs))))

    def teacher_index(
        self, teacher_labels: Any, student_labels: Any, ignore_index: int = IGNORE_INDEX
    ) -> np.ndarray:
        """`eta_teacher_index`: for each student label position, the exactly aligned teacher label position or −1.

        Takes label rows ([T] or right-padded [B, T], ignore_index outside the response); returns int64 of the
        student labels' shape.
        """
        t_labels, s_labels = _as_rows(teacher_labels), _as_rows(student_labels)
        if t_labels.shape[0] != s_labels.shape[0]:
            raise ValueError(f"batch sizes differ: teacher {t_labels.shape[0]}, student {s_labels.shape[0]}")
        t_flat = np.flatnonzero(t_labels != ignore_index)
        s_flat = np.flatnonzero(s_labels != ignore_index)
        t_width, s_width = max(t_labels.shape[1], 1), max(s_labels.shape[1], 1)
        ti, sj = self._match(
            t_labels.ravel()[t_flat],
            t_flat // t_width,
            s_labels.ravel()[s_flat],
            s_flat // s_width,
            len(t_labels),
        )
        index = np.full(s_labels.shape, -1, dtype=np.int64)
        index.ravel()[s_flat[sj]] = t_flat[ti] % t_width
        return index[0] if _ndim(student_labels) == 1 else index

    def _match(
        self, t_ids: np.ndarray, t_seq: np.ndarray, s_ids: np.ndarray, s_seq: np.ndarray, batch: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Flat indices (teacher, student) of the aligned tokens of a whole batch (`seq` = example per token)."""
        _check_ids(t_ids, self.teacher_lengths.size, "teacher")
        _check_ids(s_ids, self.student_lengths.size, "student")
        if self.backend == "numba":
            return self._match_compiled(t_ids, t_seq, s_ids, s_seq, batch)
        return self._match_numpy(t_ids, t_seq, s_ids, s_seq, batch)

    def _match_compiled(
        self, t_ids: np.ndarray, t_seq: np.ndarray, s_ids: np.ndarray, s_seq: np.ndarray, batch: int
    ) -> tuple[np.ndarray, np.ndarray]:
        from dskd_core.alignment._kernels import two_pointer_batch

        t_bounds = np.searchsorted(t_seq, np.arange(batch + 1))  # tokens are grouped by example, in order
        s_bounds = np.searchsorted(s_seq, np.arange(batch + 1))
        size = min(t_ids.size, s_ids.size)
        out_t, out_s = np.empty(size, dtype=np.int64), np.empty(size, dtype=np.int64)
        found = two_pointer_batch(
            np.ascontiguousarray(t_ids), t_bounds, np.ascontiguousarray(s_ids), s_bounds,
            self.teacher_lengths, self.teacher_keys, self.student_lengths, self.student_keys, out_t, out_s,
        )  # fmt: skip
        return out_t[:found], out_s[:found]

    def _match_numpy(
        self, t_ids: np.ndarray, t_seq: np.ndarray, s_ids: np.ndarray, s_seq: np.ndarray, batch: int
    ) -> tuple[np.ndarray, np.ndarray]:
        t_len, s_len = self.teacher_lengths[t_ids], self.student_lengths[s_ids]
        t_start, t_zero, t_rank = _coordinates(t_len, t_seq, batch)
        s_start, s_zero, s_rank = _coordinates(s_len, s_seq, batch)
        span = int(max(t_start.max(initial=0), s_start.max(initial=0))) + 1
        ranks = int(max(t_rank.max(initial=0), s_rank.max(initial=0))) + 1
        width = (int(max(t_len.max(initial=0), s_len.max(initial=0))) + 1) * ranks
        if batch * span * width >= 2**62:
            raise ValueError(
                "sequences too long for the int64 alignment codes; align fewer examples per call"
            )

        def codes(seq: np.ndarray, start: np.ndarray, length: np.ndarray, zero: np.ndarray, rank: np.ndarray):
            # (example, start, length, rank) in one integer: a zero-length token is told apart by its rank.
            code = (seq * span + start) * width + length * ranks
            code[zero] += rank
            return code

        t_code = codes(t_seq, t_start, t_len, t_zero, t_rank)
        s_code = codes(s_seq, s_start, s_len, s_zero, s_rank)
        found = np.minimum(np.searchsorted(s_code, t_code), max(s_code.size - 1, 0))
        ti = np.flatnonzero(s_code[found] == t_code) if s_code.size else np.zeros(0, dtype=np.int64)
        sj = found[ti]
        same = self.teacher_keys[t_ids[ti]] == self.student_keys[s_ids[sj]]
        return ti[same], sj[same]


def _coordinates(lengths: np.ndarray, seq: np.ndarray, batch: int) -> tuple[np.ndarray, ...]:
    """Per token its start offset inside its example; the zero-length tokens and their rank in their run."""
    starts = np.cumsum(lengths) - lengths
    first = np.flatnonzero(np.diff(seq, prepend=-1))
    example_base = np.zeros(batch, dtype=np.int64)
    example_base[seq[first]] = starts[first]
    local_start = starts - example_base[seq]
    zero = np.flatnonzero(lengths == 0)
    k = np.arange(zero.size)
    head = np.ones(zero.size, dtype=bool)
    head[1:] = (np.diff(zero) != 1) | (seq[zero[1:]] != seq[zero[:-1]])
    rank = k - np.maximum.accumulate(np.where(head, k, 0)) if zero.size else k
    return local_start, zero, rank


def _flatten(seqs: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenated ids, the example index of each token, and each example's first flat index."""
    arrays = [np.asarray(s, dtype=np.int64).reshape(-1) for s in seqs]
    counts = np.array([a.size for a in arrays], dtype=np.int64)
    ids = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    return ids, np.repeat(np.arange(len(arrays)), counts), np.cumsum(counts) - counts


def _ndim(labels: Any) -> int:
    return labels.dim() if hasattr(labels, "dim") else np.ndim(labels)


def _as_rows(labels: Any) -> np.ndarray:
    array = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels, dtype=np.int64)
    if array.ndim not in (1, 2):
        raise ValueError(f"labels must be [T] or [B, T], got shape {array.shape}")
    return array.reshape(1, -1) if array.ndim == 1 else array


def _check_ids(ids: np.ndarray, size: int, side: str) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= size):
        raise ValueError(f"{side} token ids outside [0, {size}): min {ids.min()}, max {ids.max()}")


def exact_aligner(teacher_tokenizer: Any, student_tokenizer: Any, backend: str = "numba") -> ExactAligner:
    """The cached `ExactAligner` of a tokenizer pair (built once per pair of tokenizer contents)."""
    return pair_cached(
        f"exact:{backend}", teacher_tokenizer, student_tokenizer, partial(ExactAligner, backend=backend)
    )


def align_batch(
    teacher_seqs: Sequence[Any],
    student_seqs: Sequence[Any],
    teacher_tokenizer: Any,
    student_tokenizer: Any,
    *,
    backend: str = "numba",
) -> list[np.ndarray]:
    """Fast exact alignment of a batch: per example an int64 [K, 2] array of (teacher, student) positions."""
    return exact_aligner(teacher_tokenizer, student_tokenizer, backend).align_batch(
        teacher_seqs, student_seqs
    )


def eta_teacher_index(
    teacher_labels: Any,
    student_labels: Any,
    teacher_tokenizer: Any,
    student_tokenizer: Any,
    *,
    ignore_index: int = IGNORE_INDEX,
    backend: str = "numba",
) -> np.ndarray:
    """For student label position t, the teacher label position exactly aligned with it, else −1 ([T] or [B, T])."""
    aligner = exact_aligner(teacher_tokenizer, student_tokenizer, backend)
    return aligner.teacher_index(teacher_labels, student_labels, ignore_index)


def alignment_ratio(teacher_index: Any, student_labels: Any, ignore_index: int = IGNORE_INDEX) -> float:
    """Aligned student label positions / student label positions (0.0 when there are none)."""
    index, labels = np.asarray(teacher_index), np.asarray(student_labels)
    total = int((labels != ignore_index).sum())
    return float((index >= 0).sum()) / total if total else 0.0
