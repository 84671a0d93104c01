"""MinED alignment (methods.md §3.4): align two token sequences by dynamic programming on edit distance.

Each token becomes a string of symbols: its canonical bytes without space bytes (0–255), or one marker symbol
(≥ 256) for a special token, shared by the same role on both sides (UNK and unused ids get a symbol of their own).

Costs (a token-level edit distance that bounds the character-level one from above):
* substitution (pair teacher token a with student token b): Levenshtein distance of their symbol strings;
* gap (leave a token unpaired): its length + 1 — as if every token ended with a boundary symbol, so pairing two
  tokens (≤ max(|a|, |b|)) is always cheaper than leaving both unpaired, and a lone whitespace token still costs 1.
Ties prefer pairing, then leaving the teacher token unpaired. Every diagonal step of the optimal path is a 1:1
pair (identical or not); MinED then remaps the teacher's distribution there and uses gold one-hot elsewhere.

The DP is compiled with numba (`_kernels.py`): ~n·m edit distances of short strings, milliseconds at 512².
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dskd_core.alignment.canonical import SPACE, TokenTable, pair_cached
from dskd_core.alignment.exact import IGNORE_INDEX, NEVER_EQUAL_ROLES, _as_rows, _check_ids, _ndim


def _symbol_tables(teacher: TokenTable, student: TokenTable) -> tuple[np.ndarray, ...]:
    """Flat int64 symbols and offsets [V + 1] per vocabulary; token id k owns symbols[offsets[k]:offsets[k+1]]."""
    markers: dict[Any, int] = {}
    out = []
    for side, table in (("teacher", teacher), ("student", student)):
        pieces: list[np.ndarray] = []
        for token_id, data in enumerate(table.token_bytes):
            if data is None:
                role = table.roles.get(token_id, "unused")
                name = ("special", role) if role not in NEVER_EQUAL_ROLES else (side, token_id)
                pieces.append(np.array([256 + markers.setdefault(name, len(markers))], dtype=np.int64))
            else:
                pieces.append(
                    np.frombuffer(data.replace(bytes([SPACE]), b""), dtype=np.uint8).astype(np.int64)
                )
        lengths = np.array([p.size for p in pieces], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        symbols = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
        out += [symbols, offsets]
    return tuple(out)


class MinEDAligner:
    """MinED alignment for one (teacher, student) tokenizer pair. Get it with `mined_aligner`."""

    def __init__(self, teacher: TokenTable, student: TokenTable) -> None:
        self.teacher_symbols, self.teacher_offsets, self.student_symbols, self.student_offsets = (
            _symbol_tables(teacher, student)
        )

    def align(self, teacher_ids: Any, student_ids: Any) -> tuple[np.ndarray, int]:
        """Per student position the paired teacher position (−1 = gap), and the optimal alignment cost."""
        from dskd_core.alignment._kernels import mined_dp

        t_ids = np.ascontiguousarray(np.asarray(teacher_ids, dtype=np.int64).reshape(-1))
        s_ids = np.ascontiguousarray(np.asarray(student_ids, dtype=np.int64).reshape(-1))
        _check_ids(t_ids, self.teacher_offsets.size - 1, "teacher")
        _check_ids(s_ids, self.student_offsets.size - 1, "student")
        paired, cost = mined_dp(
            t_ids,
            s_ids,
            self.teacher_symbols,
            self.teacher_offsets,
            self.student_symbols,
            self.student_offsets,
        )
        return paired, int(cost)

    def teacher_index(
        self, teacher_labels: Any, student_labels: Any, ignore_index: int = IGNORE_INDEX
    ) -> np.ndarray:
        """`mined_teacher_index`: per student label position, the MinED-paired teacher label position or −1."""
        t_labels, s_labels = _as_rows(teacher_labels), _as_rows(student_labels)
        if t_labels.shape[0] != s_labels.shape[0]:
            raise ValueError(f"batch sizes differ: teacher {t_labels.shape[0]}, student {s_labels.shape[0]}")
        index = np.full(s_labels.shape, -1, dtype=np.int64)
        for row in range(s_labels.shape[0]):  # one compiled DP per example; no per-token Python
            t_cols = np.nonzero(t_labels[row] != ignore_index)[0]
            s_cols = np.nonzero(s_labels[row] != ignore_index)[0]
            paired, _ = self.align(t_labels[row, t_cols], s_labels[row, s_cols])
            hit = paired >= 0
            index[row, s_cols[hit]] = t_cols[paired[hit]]
        return index[0] if _ndim(student_labels) == 1 else index


def mined_aligner(teacher_tokenizer: Any, student_tokenizer: Any) -> MinEDAligner:
    """The cached `MinEDAligner` of a tokenizer pair."""
    return pair_cached("mined", teacher_tokenizer, student_tokenizer, MinEDAligner)


def mined_alignment(
    teacher_ids: Sequence[int], student_ids: Sequence[int], teacher_tokenizer: Any, student_tokenizer: Any
) -> np.ndarray:
    """Per student position, the teacher position MinED pairs it with 1:1, or −1 (int64 [len(student_ids)])."""
    paired, _ = mined_aligner(teacher_tokenizer, student_tokenizer).align(teacher_ids, student_ids)
    return paired


def mined_teacher_index(
    teacher_labels: Any,
    student_labels: Any,
    teacher_tokenizer: Any,
    student_tokenizer: Any,
    *,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """For student label position t, the MinED-paired teacher label position, else −1 ([T] or [B, T])."""
    aligner = mined_aligner(teacher_tokenizer, student_tokenizer)
    return aligner.teacher_index(teacher_labels, student_labels, ignore_index)
