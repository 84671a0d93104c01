"""The quality benchmark's configurations (bench/quality.py): one Row per configuration, one Budget per run size.

A row is (name, method, student, spec overrides); the overrides are dotted JobSpec paths, e.g.
{"distill.temperature": 1.0}. Add a row here to add a configuration to the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Row:
    """One configuration: `student` is "student" (same vocabulary as the teacher) or "cross_student"."""

    name: str
    method: str
    student: str = "student"
    overrides: dict[str, Any] = field(default_factory=dict)
    on_policy_of: str | None = None  # resolved at run time to the best off-policy KD row of this student


@dataclass(frozen=True)
class Budget:
    """The student's budget and the evaluation settings, identical for every row."""

    steps: int
    batch_size: int
    lr: float
    train_examples: int  # the student sees only the first N training records
    seeds: tuple[int, ...]
    eval_dev: int  # first N dev records generated for Rouge-L
    eval_test: int
    dev_ce_examples: int  # dev records for run_job's teacher-forced dev CE (before/after)
    max_new_tokens: int = 64
    max_prompt_length: int = 64
    max_length: int = 128
    warmup_ratio: float = 0.05
    kd_rate: float = 0.5
    temperature: float = 2.0
    threads: int = 2  # torch threads per run
    jobs: int = 1  # runs at a time (processes)


def _kd_rows(method: str, divergences: tuple[str, ...], student: str = "student") -> list[Row]:
    return [Row(f"{method}_{d}", method, student, {"distill.divergence": d}) for d in divergences]


DIVERGENCES = ("fkl", "rkl", "akl")
# On-policy KD (methods.md §4) from the first step: the student budget is shorter than an epoch.
ON_POLICY = {"distill.on_policy_ratio": 0.5, "distill.on_policy_start_epoch": 1}

ROWS: list[Row] = [
    Row("sft", "sft"),
    Row("seqkd", "seqkd"),
    *_kd_rows("vanilla_kd", DIVERGENCES),
    *_kd_rows("dskd", DIVERGENCES),
    Row("sft_cross", "sft", "cross_student"),
    Row("uld", "uld", "cross_student"),
    Row("mined", "mined", "cross_student"),
    Row("dskd_cma", "dskd_cma", "cross_student", {"distill.divergence": "fkl"}),
    Row("dskd_eta", "dskd_eta", "cross_student", {"distill.divergence": "fkl"}),
    Row("onpolicy_best", "", "student", ON_POLICY, on_policy_of="student"),
    Row("onpolicy_best_cross", "", "cross_student", ON_POLICY, on_policy_of="cross_student"),
]
# Why KD does or does not beat SFT here: the KD temperature, the KD weight and DSKD's v1 recipe (trained random
# projectors, gold-label t2s CE), each changed alone from the main rows' settings (`--ablation`).
ABLATION_ROWS: list[Row] = [
    Row("sft", "sft"),
    Row("vanilla_kd_fkl", "vanilla_kd", "student", {"distill.divergence": "fkl"}),
    Row("dskd_fkl", "dskd", "student", {"distill.divergence": "fkl"}),
    Row(
        "vanilla_kd_fkl_tau1",
        "vanilla_kd",
        "student",
        {"distill.divergence": "fkl", "distill.temperature": 1.0},
    ),
    Row("dskd_fkl_tau1", "dskd", "student", {"distill.divergence": "fkl", "distill.temperature": 1.0}),
    Row(
        "vanilla_kd_fkl_rate0.2",
        "vanilla_kd",
        "student",
        {"distill.divergence": "fkl", "distill.kd_rate": 0.2},
    ),
    Row("dskd_fkl_rate0.2", "dskd", "student", {"distill.divergence": "fkl", "distill.kd_rate": 0.2}),
    Row(
        "dskd_eta_tau1",
        "dskd_eta",
        "cross_student",
        {"distill.divergence": "fkl", "distill.temperature": 1.0},
    ),
    Row(
        "dskd_cma_tau1",
        "dskd_cma",
        "cross_student",
        {"distill.divergence": "fkl", "distill.temperature": 1.0},
    ),
    Row(
        "dskd_fkl_v1_random",
        "dskd",
        "student",
        {"distill.divergence": "fkl", "distill.projector_init": "random", "distill.dskd_variant": "v1"},
    ),
]
QUICK_ROWS: list[Row] = [
    Row("sft", "sft"),
    Row("vanilla_kd_fkl", "vanilla_kd", "student", {"distill.divergence": "fkl"}),
    Row("dskd_fkl", "dskd", "student", {"distill.divergence": "fkl"}),
]

# One epoch of the student's 8000 records (the teacher saw 40000 for 1000 steps of 64): SFT lands at about a
# third of the teacher's Rouge-L here (bench calibration, docs/results.md). One torch thread per run, two runs at
# a time: tiny models crawl with two threads on a shared 2-core machine.
FULL_BUDGET = Budget(
    steps=500, batch_size=16, lr=2e-3, train_examples=8000, seeds=(0, 1, 2), eval_dev=450, eval_test=900,
    dev_ce_examples=90, threads=1, jobs=2,
)  # fmt: skip
QUICK_BUDGET = Budget(
    steps=6, batch_size=8, lr=2e-3, train_examples=64, seeds=(0,), eval_dev=9, eval_test=9, dev_ce_examples=8,
    max_new_tokens=24, threads=1,
)  # fmt: skip
