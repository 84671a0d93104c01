"""The distillation job spec: one pydantic definition shared by the CLI, the API and the worker.

This module must stay importable without torch or transformers (the API imports it). Method and divergence
names are closed enums; the engine's registries are checked against them in the tests.
"""

from __future__ import annotations

import json
import string
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

# The loss's default element budget per chunk of positions (all heads' logits together) and the fewest rows a
# chunk may have; bench/loss_memory.py measured the choice (design.md "Losses").
DEFAULT_CHUNK_ELEMENTS = 2**25
MIN_CHUNK_ROWS = 16


class Method(StrEnum):
    sft = "sft"
    seqkd = "seqkd"
    vanilla_kd = "vanilla_kd"
    dskd = "dskd"
    dskd_cma = "dskd_cma"
    dskd_eta = "dskd_eta"
    shared_vocab_kd = "shared_vocab_kd"
    uld = "uld"
    mined = "mined"


class Divergence(StrEnum):
    fkl = "fkl"
    rkl = "rkl"
    js = "js"
    gjsd = "gjsd"
    skl = "skl"
    srkl = "srkl"
    tvd = "tvd"
    akl = "akl"


class MethodInfo(BaseModel):
    """Static facts about a method that validation needs before any model is loaded."""

    model_config = ConfigDict(frozen=True)
    needs_teacher: bool
    # "none": no teacher logits compared; "same": the teacher and student tokenizers must be identical;
    # "cross": works across different tokenizers (and on identical ones).
    vocabulary: Literal["none", "same", "cross"]
    uses_divergence: bool
    description: str


METHOD_INFO: dict[Method, MethodInfo] = {
    Method.sft: MethodInfo(
        needs_teacher=False,
        vocabulary="none",
        uses_divergence=False,
        description="Cross-entropy on the reference responses only.",
    ),
    Method.seqkd: MethodInfo(
        needs_teacher=True,
        vocabulary="none",
        uses_divergence=False,
        description="Sequence-level KD: the teacher writes the responses, the student is trained on them with CE.",
    ),
    Method.vanilla_kd: MethodInfo(
        needs_teacher=True,
        vocabulary="same",
        uses_divergence=True,
        description="CE plus a divergence between the two models' own output distributions.",
    ),
    Method.dskd: MethodInfo(
        needs_teacher=True,
        vocabulary="same",
        uses_divergence=True,
        description="Dual-Space KD: projectors compare both distributions through one head, in both spaces.",
    ),
    Method.dskd_cma: MethodInfo(
        needs_teacher=True,
        vocabulary="cross",
        uses_divergence=True,
        description="DSKD with cross-model attention aligning student and teacher positions (v1).",
    ),
    Method.dskd_eta: MethodInfo(
        needs_teacher=True,
        vocabulary="cross",
        uses_divergence=True,
        description="DSKD with exact token alignment on canonical token bytes (v2).",
    ),
    Method.shared_vocab_kd: MethodInfo(
        needs_teacher=True,
        vocabulary="cross",
        uses_divergence=True,
        description="KD restricted to the shared vocabulary columns on exactly aligned positions.",
    ),
    Method.uld: MethodInfo(
        needs_teacher=True,
        vocabulary="cross",
        uses_divergence=False,
        description="Universal logit distillation: L1 between sorted distributions, positions paired in order.",
    ),
    Method.mined: MethodInfo(
        needs_teacher=True,
        vocabulary="cross",
        uses_divergence=False,
        description="Minimum-edit-distance alignment; teacher logits remapped into the student vocabulary.",
    ),
}

CROSS_VOCAB_METHODS: tuple[str, ...] = tuple(
    m.value for m, i in METHOD_INFO.items() if i.vocabulary == "cross"
)
# Methods whose KD terms can run on student samples (docs/methods.md §4): they compare the two models position by position.
ON_POLICY_METHODS: tuple[str, ...] = ("vanilla_kd", "dskd", "dskd_eta", "dskd_cma")


class _Strict(BaseModel):
    # No NaN or infinity anywhere in a spec (`epochs: Infinity` would never end).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# numpy seeds its generator from 32 bits; larger seeds fail only once training starts.
MAX_SEED = 2**32 - 1


class LoraSpec(_Strict):
    """LoRA adapters (peft) on the student; the exported student has them merged."""

    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description='Module names to adapt, or "all-linear".'
    )


class ModelSpec(_Strict):
    """A model by hub id or local directory."""

    name_or_path: str = Field(
        ...,
        min_length=1,
        description="Hugging Face hub id (e.g. 'gpt2') or a local directory with a saved model.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "float32",
        description="Weights dtype. float16 is refused: DSKD losses overflow in fp16; use bfloat16.",
    )
    lora: LoraSpec | None = Field(
        None, description="Train LoRA adapters instead of all weights (student only)."
    )

    @field_validator("dtype", mode="before")
    @classmethod
    def _refuse_fp16(cls, v: Any) -> Any:
        if isinstance(v, str) and v.lower() in {"float16", "fp16", "half"}:
            raise ValueError(
                "float16 is not supported: DSKD's losses overflow to inf in fp16. Use 'bfloat16' or 'float32'."
            )
        return v


PromptTemplate = Annotated[
    str,
    Field(
        description=(
            "'none' (the prompt as is), 'chat' (the tokenizer's chat template), or a format string with a "
            "{prompt} placeholder (and optionally {context}), e.g. '### Instruction:\\n{prompt}\\n### Response:\\n'."
        )
    ),
]


class DataSpec(_Strict):
    """Where the instruction data comes from and how records become (prompt, response) pairs."""

    path: str | None = Field(
        None,
        description="A JSONL file or a local Hugging Face dataset directory (CLI). The service sets this itself from dataset_id.",
    )
    dataset_id: str | None = Field(None, description="Service only: the id of an uploaded dataset.")
    split: str = Field("train", description="Split to use when path is a Hugging Face DatasetDict directory.")
    prompt_field: str | None = Field(
        None,
        description="Field holding the prompt; auto-detected (prompt, instruction, input, question) when unset.",
    )
    response_field: str | None = Field(
        None,
        description="Field holding the reference answer; auto-detected (response, output, completion, answer).",
    )
    context_field: str | None = Field(
        None, description="Optional context field (Dolly's 'context'); auto-detected."
    )
    messages_field: str | None = Field(
        None, description="Chat layout: a list of {role, content}; the last assistant turn is the response."
    )
    prompt_template: PromptTemplate = "none"
    dev_path: str | None = Field(None, description="A separate dev set (same layout).")
    dev_ratio: float = Field(
        0.0,
        ge=0.0,
        le=0.5,
        description="Fraction of the data held out as dev when there is no separate dev set (dev_path, dev_dataset_id).",
    )
    dev_dataset_id: str | None = Field(
        None, description="Service only: the id of an uploaded dataset used as the dev set."
    )
    dev_max_examples: int | None = Field(None, ge=1, description="Cap on dev examples (evaluation cost).")
    max_examples: int | None = Field(None, ge=1, description="Use only the first N training records.")

    @field_validator("prompt_template")
    @classmethod
    def _check_template(cls, v: str) -> str:
        if v in {"none", "chat"}:
            return v
        try:
            fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(v) if f is not None]
        except ValueError as e:
            raise ValueError(f"not a valid format string: {e}") from e
        for name, format_spec, conversion in fields:
            # Plain named fields only: a format spec such as {prompt:>20000000} pads to any size.
            if format_spec or conversion:
                suffix = (f"!{conversion}" if conversion else "") + (f":{format_spec}" if format_spec else "")
                raise ValueError(
                    f"placeholder {{{name}{suffix}}}: only plain {{prompt}} and {{context}} are allowed "
                    "(no format specs or conversions)"
                )
        names = {name for name, _, _ in fields}
        if "prompt" not in names:
            raise ValueError("a format-string template must contain the {prompt} placeholder")
        unknown = names - {"prompt", "context"}
        if unknown:
            raise ValueError(
                f"unknown placeholders {sorted(unknown)}; only {{prompt}} and {{context}} are filled"
            )
        return v

    @field_validator("dev_dataset_id")
    @classmethod
    def _one_dev_source(cls, v: str | None, info: ValidationInfo) -> str | None:
        # Checked here, after dev_path and dev_ratio, so the error names this field (data.dev_dataset_id).
        problem = _dev_source_conflict(v, info.data.get("dev_path"), info.data.get("dev_ratio", 0.0))
        if problem:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _check_source(self) -> DataSpec:
        if self.dev_path is not None and self.dev_ratio > 0:
            raise ValueError("set either dev_path or dev_ratio, not both")
        problem = _dev_source_conflict(self.dev_dataset_id, self.dev_path, self.dev_ratio)
        if problem:  # reached by an assignment; a constructed spec fails in _one_dev_source first
            raise ValueError(f"dev_dataset_id: {problem}")
        return self


def _dev_source_conflict(dev_dataset_id: str | None, dev_path: str | None, dev_ratio: float) -> str | None:
    if dev_dataset_id is None:
        return None
    if dev_path is not None:
        return "set either dev_dataset_id or dev_path, not both"
    if dev_ratio > 0:
        return "set either dev_dataset_id or dev_ratio, not both (dev_ratio splits the training data)"
    return None


class DistillSpec(_Strict):
    """Which method, which divergence and how the KD term is weighted."""

    method: Method = Field(Method.dskd, description="Distillation method.")
    divergence: Divergence = Field(
        Divergence.fkl,
        description="Divergence used by the KD terms (both spaces for DSKD, under v1 as under v2). uld (sorted "
        "L1) and mined (forward KL) ignore it.",
    )
    beta: float = Field(
        0.5, ge=0.0, le=1.0, description="gjsd: mixture weight of the target in m = βp + (1−β)q."
    )
    skew_lambda: float = Field(0.1, ge=0.0, le=1.0, description="skl/srkl: skew weight λ.")
    alpha: float = Field(
        0.5, gt=0.0, le=1.0, description="akl: cumulative-probability threshold of the tail."
    )
    kd_rate: float = Field(0.5, ge=0.0, le=1.0, description="loss = (1 − kd_rate)·CE + kd_rate·KD.")
    temperature: float = Field(
        2.0, gt=0.0, le=100.0, description="KD temperature τ applied to both logit tensors."
    )
    teacher_temperature: float = Field(
        1.0, gt=0.0, le=100.0, description="Extra temperature on the teacher (CMA target)."
    )
    temperature_scaling: Literal["none", "tau2"] = Field(
        "none",
        description="'tau2' multiplies the KD term by τ² (the published DSKD code does not). Choose it on dev: on "
        "the fast toy world DSKD v1 (projector_init 'random', dskd_variant 'v1') at τ = 2 with 'tau2' was the best "
        "recipe by 8 dev Rouge-L, on the full toy world (a larger student) the worst, where v2 at τ = 1 without "
        "it won (docs/results.md).",
    )
    projector_init: Literal["ideal", "random"] = Field(
        "ideal",
        description="'ideal': pseudo-inverse t2s init and parameter-free s2t (v2); 'random': trained linear (v1).",
    )
    dskd_variant: Literal["v1", "v2"] = Field(
        "v2",
        description="v1: t2s CE on gold labels, KD on all positions; v2: teacher argmax labels, agreement mask. "
        "Both use `divergence` in the teacher space too; the published v1 fixed forward KL there, which is the "
        "default divergence, so v1 with fkl is the published v1.",
    )
    topk_vocab: int | None = Field(
        None, ge=1, description="Ideal init: compute pseudo-inverses on the first k vocabulary entries only."
    )
    cma_block_size: int = Field(
        256, ge=1, description="dskd_cma: student positions per block of the score tensor."
    )
    loss_chunk_elements: int = Field(
        DEFAULT_CHUNK_ELEMENTS,
        ge=2**16,
        description="Memory budget of the loss: logits elements one chunk of positions may hold, over all the "
        "heads a method reads at once (fp32: 4 bytes each). Rows per chunk = budget ÷ (sum of those vocabulary "
        f"sizes), at least {MIN_CHUNK_ROWS}; the default keeps the loss's peak memory bounded at any vocabulary "
        "size without tuning.",
    )
    loss_chunk_size: int | None = Field(
        None,
        ge=MIN_CHUNK_ROWS,
        description="Override: a fixed number of positions per loss chunk, ignoring loss_chunk_elements "
        "(memory then grows with the vocabulary).",
    )
    seqkd_data_path: str | None = Field(
        None,
        description="seqkd: where teacher-generated responses are stored (defaults to the run directory).",
    )
    on_policy_ratio: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="On-policy KD (v2): probability r that a micro-batch's KD terms run on a student sample instead "
        "of the reference response (CE stays on the reference); 0 turns it off. Methods: "
        + ", ".join(ON_POLICY_METHODS)
        + ".",
    )
    on_policy_start_epoch: int = Field(
        3, ge=1, description="On-policy KD starts with this epoch (counted from 1; the paper uses 3)."
    )
    on_policy_max_new_tokens: int | None = Field(
        None,
        ge=1,
        description="Tokens sampled per on-policy response (default: the micro-batch's longest response).",
    )

    @model_validator(mode="after")
    def _check_on_policy(self) -> DistillSpec:
        if self.on_policy_ratio > 0 and self.method.value not in ON_POLICY_METHODS:
            raise ValueError(
                f"on_policy_ratio > 0 works only with {', '.join(ON_POLICY_METHODS)}, "
                f"not with method '{self.method.value}'"
            )
        return self


class Tracker(StrEnum):
    """Experiment trackers `accelerate` drives (`training.report_to`); each needs its own package installed."""

    tensorboard = "tensorboard"
    wandb = "wandb"
    mlflow = "mlflow"
    comet_ml = "comet_ml"
    aim = "aim"
    clearml = "clearml"
    dvclive = "dvclive"


class TrainingSpec(_Strict):
    lr: float = Field(5e-4, gt=0.0, le=1.0, description="Student learning rate (peak).")
    projector_lr: float = Field(
        1e-3, gt=0.0, le=1.0, description="Learning rate of the projector parameters."
    )
    epochs: float | None = Field(
        1.0, gt=0.0, description="Epochs over the training data (ignored if max_steps is set)."
    )
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs when set.")
    batch_size: int = Field(8, ge=1, le=4096, description="Examples per micro-batch.")
    grad_accum: int = Field(1, ge=1, le=1024, description="Micro-batches per optimizer step.")
    max_prompt_length: int = Field(256, ge=1, description="Prompt tokens kept (the prompt's end is kept).")
    max_length: int = Field(512, ge=2, description="Prompt + response tokens kept.")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="Autocast precision. fp16 is refused.")
    num_processes: int = Field(
        1,
        ge=1,
        le=1024,
        description="Processes (GPUs, or CPU processes with gloo) the job runs on, data-parallel. batch_size is "
        "the global micro-batch, split across them, so the training does not depend on this number.",
    )
    teacher_cache: Literal["fp32", "bf16", "off"] = Field(
        "fp32",
        description="KD methods: store the teacher's hidden states on the training and dev data once and reuse "
        "them (later epochs, resumed runs, other jobs on the same teacher and data), in fp32 (exact) or bf16 "
        "(half the disk; teacher logits within 2^-8·Σ|h·w| of exact). Used when the caller gives a cache "
        "directory (the dskd command and the service do).",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of every random generator (32 bits).")
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of steps with linear warmup.")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine")
    weight_decay: float = Field(0.01, ge=0.0, le=1.0)
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="Gradient clipping (None disables).")
    eval_interval: int | None = Field(
        None, ge=1, description="Dev-loss evaluation every N steps (and at the end)."
    )
    eval_minutes: float | None = Field(
        10.0,
        gt=0.0,
        description="Also evaluate the dev loss (no generation) when this many minutes passed since the last "
        "evaluation (on by default, so a long run reports dev metrics as it goes; needs a dev set: "
        "data.dev_ratio, data.dev_path or data.dev_dataset_id); None turns the time rule off.",
    )
    checkpoint_interval: int | None = Field(
        None, ge=1, description="Write a resumable checkpoint every N steps."
    )
    checkpoint_minutes: float | None = Field(
        10.0,
        gt=0.0,
        description="Also write one when this many minutes passed since the last (on by default, so a crashed "
        "run loses at most this much work); None turns the time rule off.",
    )
    keep_checkpoints: int = Field(2, ge=1, description="How many checkpoints to keep on disk.")
    log_interval: int = Field(1, ge=1, description="Progress event every N steps.")
    report_to: list[Tracker] = Field(
        default_factory=list,
        max_length=len(Tracker),
        description="Trackers that also receive the metric history ('none' or [] for none; the history is "
        "always in run_dir/metrics.jsonl). Their files go to run_dir/trackers/.",
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to_list(cls, v: Any) -> Any:
        if v is None or v == "none":
            return []
        return [v] if isinstance(v, str) else v

    @field_validator("precision", mode="before")
    @classmethod
    def _refuse_fp16(cls, v: Any) -> Any:
        if isinstance(v, str) and v.lower() in {"fp16", "float16", "half"}:
            raise ValueError(
                "fp16 is not supported: DSKD losses overflow to inf in fp16. Use 'bf16' or 'fp32'."
            )
        return v

    @model_validator(mode="after")
    def _check(self) -> TrainingSpec:
        if self.epochs is None and self.max_steps is None:
            raise ValueError("set epochs or max_steps")
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                "max_prompt_length must be smaller than max_length (leave room for the response)"
            )
        return self


class EvalSpec(_Strict):
    """Generation-based evaluation (Rouge-L, exact match). Defaults follow the reference recipe (docs/methods.md §5)."""

    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(
        default_factory=lambda: [10, 20, 30, 40, 50],
        min_length=1,
        max_length=100,
        description="One sampling pass per seed; scores are reported as mean ± std over seeds. Greedy uses one pass.",
    )
    do_sample: bool = Field(True, description="Sample (the reference protocol) or decode greedily.")
    temperature: float = Field(1.0, gt=0.0, le=100.0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling threshold (1 keeps everything).")
    top_k: int = Field(0, ge=0, description="Top-k filter when sampling; 0 disables it.")
    no_repeat_ngram_size: int = Field(
        6, ge=0, description="Forbid repeating any n-gram of this size (0 disables)."
    )
    max_new_tokens: int = Field(256, ge=1, le=8192, description="Response tokens generated at most.")
    max_prompt_tokens: int | None = Field(
        256, ge=1, description="Prompt tokens kept (the prompt's end is kept)."
    )
    batch_size: int = Field(16, ge=1, le=4096, description="Prompts generated together.")
    max_examples: int | None = Field(None, ge=1, description="Evaluate only the first N records.")
    # Dev evaluation during training (off by default: it generates for every dev example with every seed).
    interval: Annotated[int, Field(ge=1)] | Literal["epoch"] | None = Field(
        None,
        description="Training: generation-based dev evaluation (Rouge-L, exact match) every N optimizer steps, or "
        "'epoch' at the end of each epoch, and at the end of training; None turns it off.",
    )
    select_best: bool = Field(
        True,
        description="With interval set: keep the checkpoint with the best dev `metric` (rotation never deletes "
        "it) and export it instead of the last weights.",
    )
    metric: Literal["rougeL", "exact_match"] = Field(
        "rougeL", description="The dev score (higher is better) that selects the best checkpoint."
    )


class JobSpec(_Strict):
    """A distillation job: teacher → student on a dataset with a method and training settings."""

    name: str | None = Field(None, max_length=200, description="A label for the job.")
    teacher: ModelSpec | None = Field(None, description="The teacher (required by every method but sft).")
    student: ModelSpec
    data: DataSpec
    distill: DistillSpec = Field(default_factory=DistillSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    evaluation: EvalSpec = Field(default_factory=EvalSpec)

    @model_validator(mode="after")
    def _check(self) -> JobSpec:
        info = METHOD_INFO[self.distill.method]
        if info.needs_teacher and self.teacher is None:
            raise ValueError(
                f"method '{self.distill.method.value}' needs a teacher: set teacher.name_or_path"
            )
        if self.teacher is not None and self.teacher.lora is not None:
            raise ValueError("teacher.lora: the teacher is frozen, LoRA applies to the student only")
        if self.data.path is None and self.data.dataset_id is None:
            raise ValueError("data: set path (a JSONL file or dataset directory) or dataset_id")
        return self

    @property
    def method_info(self) -> MethodInfo:
        return METHOD_INFO[self.distill.method]

    @classmethod
    def from_file(cls, path: str | Path) -> JobSpec:
        """Load a YAML or JSON spec file. Relative data/model paths are resolved against the file's folder."""
        import yaml

        path = Path(path)
        raw = yaml.safe_load(path.read_text())
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a spec file must hold a mapping at the top level")
        return cls.model_validate(_resolve_relative(raw, path.parent))

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def _resolve_relative(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    raw = json.loads(json.dumps(raw))  # deep copy of plain data

    def fix(value: str | None) -> str | None:
        if value is None or Path(value).is_absolute():
            return value
        candidate = base / value
        return str(candidate.resolve()) if candidate.exists() else value

    for key in ("teacher", "student"):
        if isinstance(raw.get(key), dict) and "name_or_path" in raw[key]:
            raw[key]["name_or_path"] = fix(raw[key]["name_or_path"])
    data = raw.get("data")
    if isinstance(data, dict):
        for key in ("path", "dev_path"):
            if key in data:
                data[key] = fix(data[key])
    return raw


def json_schema() -> dict[str, Any]:
    """The JSON schema of a job spec (for clients and docs)."""
    return JobSpec.model_json_schema()
