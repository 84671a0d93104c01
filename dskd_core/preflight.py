"""Pre-flight: the checks that need tokenizers and data but no model weights.

They run before a job trains (in `dskd train` and as the worker's first step), so a job that cannot work
fails within seconds with a message naming what to change, instead of after the models have loaded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dskd_core.errors import PreflightError
from dskd_core.spec import METHOD_INFO, JobSpec, Method, ModelSpec


@dataclass
class PreflightReport:
    method: str
    same_vocabulary: bool | None
    valid_methods: list[str]
    train_records: int
    overlap: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def valid_methods(same_vocabulary: bool) -> list[str]:
    """Methods that can work for a pair: the same-vocabulary ones only when both tokenizers share one vocabulary."""
    return [m.value for m, info in METHOD_INFO.items() if info.vocabulary != "same" or same_vocabulary]


def check_pair(
    method: Method | str, teacher_tokenizer: Any, student_tokenizer: Any
) -> tuple[bool, dict[str, Any]]:
    """Raises PreflightError when `method` cannot work for this pair; returns (same vocabulary, overlap report).

    Same-vocabulary methods feed the student's token ids to the teacher, so what they need is that every id
    means the same token on both sides (`same_vocabulary`); identical pre-tokenisation is not required.
    """
    from dskd_core.alignment import vocab_overlap
    from dskd_core.distillers.common import same_vocabulary

    method = Method(method)
    report = vocab_overlap(teacher_tokenizer, student_tokenizer)
    same = same_vocabulary(teacher_tokenizer, student_tokenizer)
    if METHOD_INFO[method].vocabulary == "same" and not same:
        raise PreflightError(
            f"method '{method.value}' needs the teacher and the student to share one tokenizer, but their "
            f"vocabularies differ (teacher {report.teacher_vocab_size} tokens, student {report.student_vocab_size} "
            f"tokens, {report.shared_count} shared). Valid methods for this pair: {', '.join(valid_methods(False))}."
        )
    return same, report.as_dict()


def unknown_lora_targets(targets: Iterable[str], module_names: Iterable[str]) -> list[str]:
    """The LoRA targets that name no module, by peft's rule for a list: a target matches a module whose full
    name equals it or ends with "." + it. Torch-free: the API applies it to a table of names."""
    names = set(module_names)
    return [t for t in targets if t not in names and not any(n.endswith("." + t) for n in names)]


def lora_target_message(unknown: list[str], model_type: str, adaptable: Iterable[str]) -> str:
    """The refusal both the API and the engine give for LoRA targets the student does not have."""
    choices = ", ".join(sorted(set(adaptable)))
    return (
        f"no module named {', '.join(repr(t) for t in unknown)} in the student ({model_type}); "
        f'its modules LoRA can adapt are: {choices}; or use "all-linear"'
    )


def adaptable_modules(config: Any) -> tuple[str, list[str]]:
    """(model type, full names of the modules peft's LoRA can wrap) of a causal LM built from `config` on the
    meta device: no weights are read or allocated."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    kinds = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, Conv1D)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    return config.model_type, [name for name, m in model.named_modules() if name and isinstance(m, kinds)]


def check_lora_targets(model: ModelSpec) -> None:
    """Raises PreflightError when `lora.target_modules` names a module the model does not have (peft would
    fail only after the weights loaded, or skip the name silently when another target matched)."""
    lora = model.lora
    if lora is None or lora.target_modules == "all-linear":
        return
    if not lora.target_modules:
        raise PreflightError('student.lora.target_modules is empty: name modules or use "all-linear"')
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model.name_or_path, revision=model.revision)
    except Exception as e:  # hub/network/format errors: the model load reports them with its own message
        raise PreflightError(f"cannot read the configuration of '{model.name_or_path}': {e}") from e
    model_type, names = adaptable_modules(config)
    unknown = unknown_lora_targets(lora.target_modules, names)
    if unknown:
        suffixes = {n.rsplit(".", 1)[-1] for n in names}
        raise PreflightError(
            "student.lora.target_modules: " + lora_target_message(unknown, model_type, suffixes)
        )


def preflight(spec: JobSpec) -> PreflightReport:
    """Loads the tokenizers and the data (no weights) and checks the job can run."""
    from dskd_core.data import load_records
    from dskd_core.models import load_tokenizer

    method = spec.distill.method
    student_tokenizer = load_tokenizer(spec.student)
    same: bool | None = None
    overlap = None
    notes: list[str] = []
    if spec.teacher is not None and METHOD_INFO[method].needs_teacher:
        teacher_tokenizer = load_tokenizer(spec.teacher)
        same, overlap = check_pair(method, teacher_tokenizer, student_tokenizer)
        if not same:
            notes.append(
                f"cross-vocabulary pair: {overlap['shared_count']} shared tokens "
                f"({overlap['student_fraction']:.1%} of the student's vocabulary)"
            )
    check_lora_targets(spec.student)
    records = load_records(spec.data)
    notes.append(f"pre-flight passed: {len(records)} training records, method {method.value}")
    return PreflightReport(
        method=method.value,
        same_vocabulary=same,
        valid_methods=valid_methods(same) if same is not None else [m.value for m in Method],
        train_records=len(records),
        overlap=overlap,
        notes=notes,
    )
