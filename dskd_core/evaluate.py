"""Generation-based evaluation: Rouge-L F1 and exact match, averaged over examples, mean ± std over seeds.

Protocol (docs/methods.md §5): each seed gives one sampling pass over the records; a pass scores every generated
response against its references and averages over examples; the report is the mean and the population
standard deviation (ddof=0) of those per-seed averages. Greedy decoding is deterministic, so it runs one pass
and its std is 0.

- Rouge-L: `rouge_score.RougeScorer(["rougeL"], use_stemmer=True)` F-measure × 100. Its tokenizer lowercases
  and keeps only [a-z0-9] runs, so text without such characters scores 0.
- Exact match: 100 if the prediction equals a reference after case folding, trimming and collapsing every
  whitespace run to one space; punctuation is kept.
- Several references (`references` list field, plus `response`): the maximum over references, per metric.

Prompts are rendered with the template the model was trained with: `run_eval` reads it from the model
directory's manifest.json (an export writes one) when the caller gives none; see `trained_prompt_template`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from dskd_core.spec import EvalSpec

if TYPE_CHECKING:
    from dskd_core.data import Record


class MeanStd(BaseModel):
    mean: float
    std: float


class SeedScores(BaseModel):
    """Averages over the examples of one pass (seed None: greedy)."""

    seed: int | None
    rougeL: float
    exact_match: float


class ExampleOutput(BaseModel):
    index: int = Field(description="Position of the record in the evaluated list.")
    seed: int | None
    prediction: str
    rougeL: float
    exact_match: float


class EvalResult(BaseModel):
    num_examples: int
    do_sample: bool
    rougeL: MeanStd
    exact_match: MeanStd
    per_seed: list[SeedScores]
    generations: list[ExampleOutput] | None = None
    prompt_template: str | None = Field(None, description="The template the prompts were rendered with.")
    prompt_template_source: str | None = Field(
        None, description="Where that template came from: the caller, a manifest file, or the default."
    )


@cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: str | Sequence[str]) -> float:
    """Rouge-L F1 × 100 of `prediction`, the best over the references."""
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("rouge_l needs at least one reference")
    scorer = _rouge_scorer()
    return max(scorer.score(ref, prediction)["rougeL"].fmeasure for ref in refs) * 100.0


def normalize_answer(text: str) -> str:
    """Case-folded, trimmed, whitespace runs collapsed to one space (the exact-match normal form)."""
    return re.sub(r"\s+", " ", text).strip().casefold()


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """100 if the normalised prediction equals a normalised reference, else 0."""
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("exact_match needs at least one reference")
    pred = normalize_answer(prediction)
    return 100.0 if any(pred == normalize_answer(r) for r in refs) else 0.0


def mean_std(values: Sequence[float]) -> MeanStd:
    """Mean and population standard deviation (ddof=0); one value gives std 0."""
    if not values:
        raise ValueError("mean_std of no values")
    mean = math.fsum(values) / len(values)
    var = math.fsum((v - mean) ** 2 for v in values) / len(values)
    return MeanStd(mean=mean, std=math.sqrt(var))


def record_references(record: dict[str, Any]) -> list[str]:
    """The reference answers of a record: `response` then any `references`, without duplicates."""
    refs: list[str] = []
    if record.get("response") is not None:
        refs.append(str(record["response"]))
    extra = record.get("references") or []
    if isinstance(extra, str):
        extra = [extra]
    refs.extend(str(r) for r in extra if str(r) not in refs)
    if not refs:
        raise ValueError(f"record has no 'response' nor 'references': keys {sorted(record)}")
    return refs


def score_predictions(
    predictions: Sequence[str], records: Sequence[dict[str, Any]]
) -> tuple[list[float], list[float]]:
    """Per-example (Rouge-L, exact match) of predictions against their records' references."""
    if len(predictions) != len(records):
        raise ValueError(f"{len(predictions)} predictions for {len(records)} records")
    rouge, em = [], []
    for pred, record in zip(predictions, records, strict=True):
        refs = record_references(record)
        rouge.append(rouge_l(pred, refs))
        em.append(exact_match(pred, refs))
    return rouge, em


def evaluate_model(
    model,
    tokenizer,
    records: Sequence[dict[str, Any]],
    *,
    settings: EvalSpec,
    keep_generations: bool = False,
) -> EvalResult:
    """Generate for every record (its `prompt` is used as is) with each seed, and score the responses."""
    from dskd_core.generation import generate_batch

    records = list(records)[: settings.max_examples]
    if not records:
        raise ValueError("no records to evaluate")
    prompts = [str(r["prompt"]) for r in records]
    seeds: list[int | None] = list(settings.seeds) if settings.do_sample else [None]
    per_seed: list[SeedScores] = []
    outputs: list[ExampleOutput] = []
    for seed in seeds:
        predictions = generate_batch(
            model,
            tokenizer,
            prompts,
            max_new_tokens=settings.max_new_tokens,
            do_sample=settings.do_sample,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            no_repeat_ngram_size=settings.no_repeat_ngram_size,
            seed=seed,
            batch_size=settings.batch_size,
            max_prompt_tokens=settings.max_prompt_tokens,
        )
        rouge, em = score_predictions(predictions, records)
        per_seed.append(
            SeedScores(seed=seed, rougeL=math.fsum(rouge) / len(rouge), exact_match=math.fsum(em) / len(em))
        )
        if keep_generations:
            outputs.extend(
                ExampleOutput(index=i, seed=seed, prediction=p, rougeL=r, exact_match=e)
                for i, (p, r, e) in enumerate(zip(predictions, rouge, em, strict=True))
            )
    return EvalResult(
        num_examples=len(records),
        do_sample=settings.do_sample,
        rougeL=mean_std([s.rougeL for s in per_seed]),
        exact_match=mean_std([s.exact_match for s in per_seed]),
        per_seed=per_seed,
        generations=outputs if keep_generations else None,
    )


def load_eval_model(path_or_id: str, *, dtype: str = "float32", device=None):
    """A saved model directory (or hub id) and its tokenizer, frozen in eval mode on `device` (default: best)."""
    import torch

    from dskd_core.models import load_model, load_tokenizer
    from dskd_core.spec import ModelSpec

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    spec = ModelSpec(name_or_path=str(path_or_id), dtype=dtype)
    return load_model(spec, trainable=False, device=device), load_tokenizer(spec)


def evaluate_checkpoint(
    path_or_dir: str | Path,
    records: Sequence[dict[str, Any]],
    settings: EvalSpec,
    *,
    dtype: str = "float32",
    device=None,
    keep_generations: bool = False,
) -> EvalResult:
    """Evaluate an exported checkpoint directory (or any model AutoModelForCausalLM can load)."""
    model, tokenizer = load_eval_model(str(path_or_dir), dtype=dtype, device=device)
    return evaluate_model(model, tokenizer, records, settings=settings, keep_generations=keep_generations)


def records_for_eval(records: Sequence[Record], prompt_template: str, tokenizer) -> list[dict[str, Any]]:
    """Data-layer records as eval records: the prompt rendered with the template the model was trained with."""
    from dskd_core.data import format_prompt

    return [
        {
            "prompt": format_prompt(r, prompt_template, tokenizer),
            "response": r.response,
            "references": r.references,
        }
        for r in records
    ]


MANIFEST = "manifest.json"  # dskd_core.export.MANIFEST


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _template_in(manifest: dict[str, Any]) -> str | None:
    template = manifest.get("prompt_template")
    if template is None:  # exports written before the key existed still carry the job spec
        spec = manifest.get("spec")
        data = spec.get("data") if isinstance(spec, dict) else None
        template = data.get("prompt_template") if isinstance(data, dict) else None
    return template if isinstance(template, str) else None


def trained_prompt_template(model_dir: str | Path) -> tuple[str, Path] | None:
    """The prompt template a model directory was trained with, and the manifest it was read from.

    Looked up in MODEL_DIR/manifest.json (`prompt_template`, else the job spec's `data.prompt_template`), then in
    the manifest of the directory above when that manifest lists MODEL_DIR's name under `models` (a toy world
    describes its teacher and students that way). None when neither says.
    """
    model_dir = Path(model_dir)
    own = model_dir / MANIFEST
    manifest = _read_manifest(own)
    if manifest is not None and (template := _template_in(manifest)) is not None:
        return template, own
    parent = model_dir.resolve().parent / MANIFEST
    manifest = _read_manifest(parent)
    models = manifest.get("models") if manifest is not None else None
    if isinstance(models, dict) and model_dir.resolve().name in models:
        template = manifest.get("prompt_template")
        if isinstance(template, str):
            return template, parent
    return None


def unescape_template(template: str) -> str:
    r"""A template typed on a command line: `\n`, `\t` and `\r` become the control characters and `\\` a
    backslash; any other backslash stays as it is."""
    escapes = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
    return re.sub(r"\\([ntr\\])", lambda m: escapes[m[1]], template)


def check_template(template: str) -> str:
    """The template if `DataSpec` accepts it; a ValueError naming the problem otherwise."""
    from pydantic import ValidationError

    from dskd_core.spec import DataSpec

    try:
        DataSpec(path="-", prompt_template=template)
    except ValidationError as e:
        raise ValueError(f"prompt template {template!r}: {e.errors()[0]['msg']}") from None
    return template


def run_eval(
    model_path: str | Path,
    data_path: str | Path,
    settings: EvalSpec,
    prompt_template: str | None = None,
    *,
    dtype: str = "float32",
    device=None,
    keep_generations: bool = False,
) -> EvalResult:
    """The CLI's `eval`: read records (any layout `dskd_core.data.load_records` reads: JSONL, JSON, dataset
    directories), load the model, render the prompts, generate and score.

    The prompts are rendered with `prompt_template` when given, else with the template the model's manifest
    records (`trained_prompt_template`), else as they are ("none"). The result says which one and from where.
    """
    from dskd_core.data import load_records

    if prompt_template is not None:
        source = "given"
    elif (found := trained_prompt_template(model_path)) is not None:
        prompt_template, source = found[0], str(found[1])
    else:
        prompt_template, source = "none", "default (no manifest.json with a prompt template)"
    check_template(prompt_template)
    raw = load_records(data_path)[: settings.max_examples]
    model, tokenizer = load_eval_model(str(model_path), dtype=dtype, device=device)
    records = records_for_eval(raw, prompt_template, tokenizer)
    result = evaluate_model(model, tokenizer, records, settings=settings, keep_generations=keep_generations)
    return result.model_copy(update={"prompt_template": prompt_template, "prompt_template_source": source})
