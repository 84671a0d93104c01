"""Engine commands: train, toy, eval, pair-report, spec-schema. They call `dskd_core` and nothing of the service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from dskd_cli.app import app, fail, format_validation_error
from dskd_core.progress import ProgressEvent


def override_dict(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`section.field=value` settings applied to a spec dict in place (values parsed as YAML: 200, 1e-3, true)."""
    import yaml

    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise fail(f"--set {item!r}: expected section.field=value, e.g. training.max_steps=200")
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                raise fail(f"--set {item!r}: '{part}' is not a section of the spec")
        node[leaf] = yaml.safe_load(value)
    return raw


def apply_overrides(spec: Any, overrides: list[str]) -> Any:
    """`section.field=value` settings on top of a validated spec; returns the validated result."""
    from dskd_core.spec import JobSpec

    return JobSpec.model_validate(override_dict(json.loads(spec.to_json()), overrides))


def load_spec(path: Path, overrides: list[str] | None = None):
    """Read and validate a spec file, turning every user error into a readable message and exit code 2."""
    import yaml
    from pydantic import ValidationError

    from dskd_core.spec import JobSpec

    if not path.is_file():
        raise fail(f"{path}: no such spec file")
    try:
        spec = JobSpec.from_file(path)
        return apply_overrides(spec, overrides) if overrides else spec
    except ValidationError as e:
        raise fail(f"{path}: {format_validation_error(e)}") from None
    except (yaml.YAMLError, ValueError) as e:
        raise fail(f"{path}: {e}") from None


class BarSink:
    """A tqdm progress bar for `dskd train`, with evaluation and checkpoint lines printed above it."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.evals: list[dict[str, float]] = []

    def emit(self, event: ProgressEvent) -> None:
        from tqdm import tqdm

        if event.type == "eval":
            self.evals.append(dict(event.metrics))
        if self.bar is None and event.total_steps:
            self.bar = tqdm(total=event.total_steps, initial=event.step, unit="step", dynamic_ncols=True)
        if event.type == "step" and self.bar is not None:
            self.bar.update(event.step - self.bar.n)
            shown = {k: event.metrics[k] for k in ("loss", "ce", "kd", "lr") if k in event.metrics}
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=False)
        elif event.type in {"eval", "checkpoint", "exported", "log"} or (
            event.type == "started" and event.message
        ):
            metrics = " ".join(f"{k}={v:.4f}" for k, v in event.metrics.items())
            text = f"[{event.type} @ step {event.step}] {metrics} {event.message or ''}".rstrip()
            (self.bar.write if self.bar is not None else print)(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@app.command()
def train(
    spec_file: Annotated[Path, typer.Argument(help="Job spec (YAML or JSON); see `dskd spec-schema`.")],
    run_dir: Annotated[
        Path | None,
        typer.Option(
            "--run-dir", help="Checkpoints and export go here (default: runs/<spec name>/<method>)."
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda or cuda:N (default: a GPU if there is one).")
    ] = None,
    method: Annotated[
        str | None, typer.Option(help="Override distill.method (sft, vanilla_kd, dskd, ...).")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a setting, e.g. --set training.max_steps=200 (repeatable)."),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Teacher cache of KD methods (default: $DSKD_CACHE_DIR or ~/.cache/dskd/teacher-cache); "
            "--set training.teacher_cache=off turns it off."
        ),
    ] = None,
    num_processes: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Run on N processes (GPUs; CPU processes with --device cpu), data-parallel; overrides "
            "training.num_processes. The training is the same for any N.",
        ),
    ] = None,
    cache_max_gb: Annotated[
        float | None,
        typer.Option(help="Size cap of the teacher cache; least recently used shards go first (default 50)."),
    ] = None,
) -> None:
    """Run a distillation job locally: pre-flight checks, training, export. Resumes if RUN_DIR has checkpoints."""
    spec = load_spec(spec_file, [*([f"distill.method={method}"] if method else []), *(overrides or [])])
    from dskd_core.cache import open_cache_dir
    from dskd_core.data.records import DataError
    from dskd_core.errors import NonFiniteLossError
    from dskd_core.models import ModelLoadError
    from dskd_core.train import PreflightError, run_job

    run_dir = run_dir or Path("runs") / (spec.name or spec_file.stem) / spec.distill.method.value
    try:
        cache = open_cache_dir(cache_dir, cache_max_gb)
    except ValueError as e:
        raise fail(f"--cache-max-gb: {e}") from None
    sink = BarSink()
    try:
        result = run_job(
            spec, run_dir, sink=sink, device=device, teacher_cache=cache, num_processes=num_processes
        )
    except (PreflightError, ModelLoadError, DataError) as e:
        raise fail(str(e)) from None
    except NonFiniteLossError as e:
        raise fail(str(e), code=1) from None
    finally:
        sink.close()
    typer.echo(f"{result.status}: {result.steps}/{result.total_steps} steps")
    if len(sink.evals) >= 2 and "dev_ce" in sink.evals[0]:
        first, last = sink.evals[0], sink.evals[-1]
        teacher = f"; teacher {first['teacher_dev_ce']:.4f}" if "teacher_dev_ce" in first else ""
        typer.echo(
            f"dev loss (response CE/token): before {first['dev_ce']:.4f} -> after {last['dev_ce']:.4f}{teacher}"
        )
    typer.echo(f"exported student: {result.export_dir}")


@app.command()
def toy(
    out: Annotated[
        Path, typer.Option(help="Directory of the toy world (reused when it is already built).")
    ] = Path("toy_world"),
    size: Annotated[str, typer.Option(help="fast (tests and the demo) or full (the benchmark).")] = "full",
    seed: Annotated[int, typer.Option(help="Seed of the data and of the models' training.")] = 0,
    threads: Annotated[
        int | None, typer.Option(help="torch threads for the build (default: every core).")
    ] = None,
) -> None:
    """Build the toy world: a pretrained + instruction-tuned teacher, two pretrained students (same and other
    vocabulary), a pretraining corpus and instruction data (docs/toy-world.md)."""
    if size not in {"full", "fast"}:
        raise fail(f"--size must be 'full' or 'fast', not '{size}'")
    from dskd_core.toy import build_toy_world

    world = build_toy_world(out, size=size, seed=seed, progress=typer.echo, threads=threads)
    for name, value in vars(world).items():
        if isinstance(value, Path):
            typer.echo(f"{name:>14}: {value}")


@app.command("pair-report")
def pair_report(
    teacher: Annotated[
        str, typer.Argument(help="Teacher: a model directory or hub id (only its tokenizer loads).")
    ],
    student: Annotated[
        str, typer.Argument(help="Student: a model directory or hub id (only its tokenizer loads).")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")] = False,
) -> None:
    """Vocabulary overlap of a teacher/student pair and the methods that can distil across it."""
    from dskd_core.alignment import vocab_overlap
    from dskd_core.distillers.common import same_vocabulary
    from dskd_core.models import ModelLoadError, load_tokenizer
    from dskd_core.preflight import valid_methods
    from dskd_core.spec import ModelSpec

    try:
        teacher_tok = load_tokenizer(ModelSpec(name_or_path=teacher))
        student_tok = load_tokenizer(ModelSpec(name_or_path=student))
    except ModelLoadError as e:
        raise fail(str(e)) from None
    report = vocab_overlap(teacher_tok, student_tok)
    # Same-vocabulary methods feed the student's ids to the teacher: equal id tables suffice (as `dskd train`
    # checks), even when the two tokenizers' pre-tokenizers differ.
    same_ids = report.identical or same_vocabulary(teacher_tok, student_tok)
    methods = valid_methods(same_ids)
    if as_json:
        payload = {
            "teacher": teacher,
            "student": student,
            "overlap": report.as_dict(),
            "same_vocabulary": same_ids,
            "valid_methods": methods,
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    typer.echo(report.format())
    typer.echo(f"valid methods: {', '.join(methods)}")
    if not same_ids:
        typer.echo(
            "vanilla_kd and dskd need identical tokenizers; use a cross-vocabulary method for this pair."
        )


@app.command("eval")
def eval_command(
    model_dir: Annotated[
        Path, typer.Argument(help="An exported student (or any saved causal LM directory).")
    ],
    data: Annotated[Path, typer.Argument(help="Records to answer: JSONL/JSON or a dataset directory.")],
    seeds: Annotated[
        str | None, typer.Option(help="Comma-separated sampling seeds (default: 10,20,30,40,50).")
    ] = None,
    greedy: Annotated[
        bool, typer.Option("--greedy", help="Decode greedily (one pass) instead of sampling.")
    ] = False,
    max_new_tokens: Annotated[int | None, typer.Option(help="Response tokens generated at most.")] = None,
    max_examples: Annotated[int | None, typer.Option(help="Evaluate only the first N records.")] = None,
    prompt_template: Annotated[
        str | None,
        typer.Option(
            help="The template the model was trained with: none, chat or a format string ('\\n' is a newline). "
            "Default: the one MODEL_DIR's manifest.json records (an export writes it), else none."
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda or cuda:N (default: a GPU if there is one).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")] = False,
) -> None:
    """Generate a response for every record and print Rouge-L and exact match (mean ± std over seeds)."""
    from pydantic import ValidationError

    from dskd_core.data.records import DataError
    from dskd_core.evaluate import run_eval, unescape_template
    from dskd_core.models import ModelLoadError
    from dskd_core.spec import EvalSpec

    settings: dict[str, Any] = {"do_sample": not greedy, "max_examples": max_examples}
    if max_new_tokens is not None:
        settings["max_new_tokens"] = max_new_tokens
    try:
        if seeds:
            settings["seeds"] = [int(s) for s in seeds.split(",") if s.strip()]
        template = unescape_template(prompt_template) if prompt_template is not None else None
        result = run_eval(model_dir, data, EvalSpec(**settings), template, device=device)
    except ValidationError as e:
        raise fail(format_validation_error(e)) from None
    except (ValueError, DataError, ModelLoadError, OSError) as e:
        raise fail(str(e)) from None
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
        return
    passes = "greedy" if greedy else f"{len(result.per_seed)} seeds"
    source = (
        "--prompt-template" if result.prompt_template_source == "given" else result.prompt_template_source
    )
    typer.echo(f"prompt template: {json.dumps(result.prompt_template)} ({source})")
    typer.echo(f"{result.num_examples} examples, {passes}")
    typer.echo(f"Rouge-L: {result.rougeL.mean:.2f} ± {result.rougeL.std:.2f}")
    typer.echo(f"exact match: {result.exact_match.mean:.2f} ± {result.exact_match.std:.2f}")


@app.command("spec-schema")
def spec_schema() -> None:
    """Print the JSON schema of a job spec."""
    from dskd_core.spec import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))
