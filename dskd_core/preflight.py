"""Pre-flight: the checks that need tokenizers and data but no model weights.

They run before a job trains (in `dskd train` and as the worker's first step), so a job that cannot work
fails within seconds with a message naming what to change, instead of after the models have loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dskd_core.errors import PreflightError
from dskd_core.spec import METHOD_INFO, JobSpec, Method


@dataclass
class PreflightReport:
    method: str
    identical_tokenizers: bool | None
    valid_methods: list[str]
    train_records: int
    overlap: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def valid_methods(identical_tokenizers: bool) -> list[str]:
    """Methods that can work for a pair: the same-vocabulary ones only when the tokenizers are identical."""
    return [m.value for m, info in METHOD_INFO.items() if info.vocabulary != "same" or identical_tokenizers]


def check_pair(
    method: Method | str, teacher_tokenizer: Any, student_tokenizer: Any
) -> tuple[bool, dict[str, Any]]:
    """Raises PreflightError when `method` cannot work for this pair; returns (identical, overlap report)."""
    from dskd_core.alignment import vocab_overlap

    method = Method(method)
    report = vocab_overlap(teacher_tokenizer, student_tokenizer)
    if METHOD_INFO[method].vocabulary == "same" and not report.identical:
        raise PreflightError(
            f"method '{method.value}' compares the two models' own distributions and needs identical tokenizers, "
            f"but the teacher and student tokenizers differ (teacher {report.teacher_vocab_size} tokens, "
            f"student {report.student_vocab_size} tokens, {report.shared_count} shared). "
            f"Valid methods for this pair: {', '.join(valid_methods(False))}."
        )
    return report.identical, report.as_dict()


def preflight(spec: JobSpec) -> PreflightReport:
    """Loads the tokenizers and the data (no weights) and checks the job can run."""
    from dskd_core.data import load_records
    from dskd_core.models import load_tokenizer

    method = spec.distill.method
    student_tokenizer = load_tokenizer(spec.student)
    identical: bool | None = None
    overlap = None
    notes: list[str] = []
    if spec.teacher is not None and METHOD_INFO[method].needs_teacher:
        teacher_tokenizer = load_tokenizer(spec.teacher)
        identical, overlap = check_pair(method, teacher_tokenizer, student_tokenizer)
        if not identical:
            notes.append(
                f"cross-vocabulary pair: {overlap['shared_count']} shared tokens "
                f"({overlap['student_fraction']:.1%} of the student's vocabulary)"
            )
    records = load_records(spec.data)
    notes.append(f"pre-flight passed: {len(records)} training records, method {method.value}")
    return PreflightReport(
        method=method.value,
        identical_tokenizers=identical,
        valid_methods=valid_methods(identical) if identical is not None else [m.value for m in Method],
        train_records=len(records),
        overlap=overlap,
        notes=notes,
    )
