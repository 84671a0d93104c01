"""The teacher→student vocabulary map and the overlap report (methods.md §3.1).

Matching rule: two tokens are the same when their canonical bytes are exactly equal, space bytes included.
The map translates a *predicted token* into the student's vocabulary (the student-space target of ETA, the
remapped logits of MinED), so it must preserve the text the token writes: `Ġthe` (" the") and `the` write
different text and are not merged. (Position alignment is a different question; there spaces are ignored.)

When several student tokens have the same bytes (a SentencePiece piece `A` and its byte token `<0x41>`, an added
token duplicating a piece), the target is the one the student would itself produce: a regular piece before a byte
token, lowest id first — except that a teacher byte token prefers a student byte token. Identical tokenizers map
every id to itself. Special tokens never match text: EOS→EOS, BOS→BOS, PAD→PAD by the ids each tokenizer
declares, UNK→UNK only when on both sides it is a token of its own (GPT-2's UNK is its EOS), other added special
tokens by equal content. No id ever becomes the unknown-token id by lookup failure: "no match" is −1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from dskd_core.alignment.canonical import ROLE_ATTRS, TokenTable, pair_cached, token_table


def tokenization_identical(teacher_tokenizer: Any, student_tokenizer: Any) -> bool:
    """Same vocabulary, merges, normaliser, pre-tokenizer, added and special tokens: ids mean the same thing."""
    return token_table(teacher_tokenizer).signature == token_table(student_tokenizer).signature


def _student_lookup(student: TokenTable) -> tuple[dict[bytes, int], dict[bytes, int]]:
    """bytes → preferred student id, among regular tokens first, and among byte-fallback tokens."""
    regular: dict[bytes, int] = {}
    byte_tokens: dict[bytes, int] = {}
    for token_id, data in enumerate(student.token_bytes):
        if not data:  # special, unused, or empty
            continue
        target = byte_tokens if student.byte_fallback[token_id] else regular
        target.setdefault(data, token_id)
    return regular, byte_tokens


def _vocab_map_array(teacher: TokenTable, student: TokenTable) -> np.ndarray:
    mapping = np.full(teacher.size, -1, dtype=np.int64)
    if teacher.signature == student.signature:
        shared = min(teacher.size, student.size)
        mapping[:shared] = np.arange(shared)
        return mapping
    regular, byte_tokens = _student_lookup(student)
    for token_id, data in enumerate(teacher.token_bytes):
        if not data:
            continue
        first, second = (byte_tokens, regular) if teacher.byte_fallback[token_id] else (regular, byte_tokens)
        mapping[token_id] = first.get(data, second.get(data, -1))
    for role in ROLE_ATTRS:  # priority order: an id that is both EOS and PAD maps as EOS
        t_id, s_id = teacher.role_ids.get(role), student.role_ids.get(role)
        if t_id is None or s_id is None or t_id >= teacher.size or mapping[t_id] != -1:
            continue
        if role == "unk" and (teacher.roles.get(t_id) != "unk" or student.roles.get(s_id) != "unk"):
            continue  # an UNK that is really another token (GPT-2: UNK = EOS) is not the same token
        mapping[t_id] = s_id
    student_special = {role: i for i, role in sorted(student.roles.items(), reverse=True)}
    for t_id, role in teacher.roles.items():
        if role.startswith("special:") and role in student_special and mapping[t_id] == -1:
            mapping[t_id] = student_special[role]
    return mapping


def build_vocab_map(teacher_tokenizer: Any, student_tokenizer: Any) -> torch.Tensor:
    """LongTensor [teacher table size]: teacher id → student id, −1 where the student has no such token.

    Cached per pair of tokenizer contents; each call returns a fresh tensor.
    """
    mapping = pair_cached("vocab_map", teacher_tokenizer, student_tokenizer, _vocab_map_array)
    return torch.from_numpy(mapping.copy())


@dataclass(frozen=True)
class VocabOverlapReport:
    """How much of each vocabulary the other one shares (users read it before choosing a method)."""

    teacher_vocab_size: int
    student_vocab_size: int
    shared_count: int  # distinct student tokens that some teacher token maps to
    teacher_shared: int  # teacher ids with a student counterpart
    student_shared: int  # student ids with a teacher counterpart
    teacher_fraction: float
    student_fraction: float
    identical: bool  # tokenisation identical: same ids for the same text
    teacher_convention: str
    student_convention: str
    special_tokens: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)  # role → (t, s)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        lines = [
            f"teacher vocabulary: {self.teacher_vocab_size} tokens ({self.teacher_convention})",
            f"student vocabulary: {self.student_vocab_size} tokens ({self.student_convention})",
            f"identical tokenisation: {'yes' if self.identical else 'no'}",
            f"shared entries: {self.shared_count}",
            f"teacher tokens with a student counterpart: {self.teacher_shared} ({self.teacher_fraction:.1%})",
            f"student tokens with a teacher counterpart: {self.student_shared} ({self.student_fraction:.1%})",
        ]
        for role, (t_id, s_id) in self.special_tokens.items():
            lines.append(f"{role.upper()}: teacher {t_id} → student {s_id}")
        return "\n".join(lines)


def vocab_overlap(teacher_tokenizer: Any, student_tokenizer: Any) -> VocabOverlapReport:
    """Overlap of the two vocabularies under the matching rule of `build_vocab_map`."""
    teacher, student = token_table(teacher_tokenizer), token_table(student_tokenizer)
    forward = pair_cached("vocab_map", teacher_tokenizer, student_tokenizer, _vocab_map_array)
    backward = pair_cached("vocab_map", student_tokenizer, teacher_tokenizer, _vocab_map_array)
    teacher_shared, student_shared = int((forward >= 0).sum()), int((backward >= 0).sum())
    specials = {}
    for role in ROLE_ATTRS:
        t_id = teacher.role_ids.get(role)
        specials[role] = (t_id, int(forward[t_id]) if t_id is not None and forward[t_id] >= 0 else None)
    return VocabOverlapReport(
        teacher_vocab_size=teacher.size,
        student_vocab_size=student.size,
        shared_count=int(np.unique(forward[forward >= 0]).size),
        teacher_shared=teacher_shared,
        student_shared=student_shared,
        teacher_fraction=teacher_shared / teacher.size if teacher.size else 0.0,
        student_fraction=student_shared / student.size if student.size else 0.0,
        identical=teacher.signature == student.signature,
        teacher_convention=str(teacher.convention),
        student_convention=str(student.convention),
        special_tokens=specials,
    )
