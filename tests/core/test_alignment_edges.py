"""Alignment edge cases that mutation testing found unasserted: one label row, and a batch of no examples."""

from __future__ import annotations

import numpy as np

from dskd_core.alignment import exact_aligner, mined_aligner
from tests.core.test_alignment import TEXTS, _byte_level, _sentencepiece, encode


def test_single_label_rows_give_single_index_rows() -> None:
    teacher, student = _byte_level(), _sentencepiece()
    t_resp = [*encode(teacher, TEXTS[2]), teacher.eos_token_id]
    s_resp = [*encode(student, TEXTS[2]), student.eos_token_id]
    t_labels, s_labels = np.array([-100, *t_resp]), np.array([-100, -100, *s_resp])
    for aligner in (mined_aligner(teacher, student), exact_aligner(teacher, student, backend="numpy")):
        batch = aligner.teacher_index(t_labels[None], s_labels[None])
        single = aligner.teacher_index(t_labels, s_labels)
        assert single.shape == s_labels.shape and batch.shape == (1, len(s_labels))
        assert single.tolist() == batch[0].tolist() and (single >= 0).any()


def test_an_empty_batch_aligns_to_nothing() -> None:
    aligner = exact_aligner(_byte_level(), _sentencepiece(), backend="numpy")
    assert aligner.align_batch([], []) == [] or all(p.size == 0 for p in aligner.align_batch([], []))
