"""The one `dskd` command: the typer app and the helpers every command group shares.

The command line sits above the three packages: engine commands (`dskd_cli.engine`) call `dskd_core`, service
commands (`dskd_cli.service`) call `api` and `worker`, so that `dskd_core` never imports the service. Heavy modules
(torch, transformers) are imported inside the commands so that `dskd --help` answers at once. To add a command,
write a function decorated with `@app.command()` in the module of its group and import that module in `main.py`.
"""

from __future__ import annotations

from typing import Any

import typer

EXIT_BAD_SPEC = 2

app = typer.Typer(
    name="dskd",
    help=(
        "Distil a large language model into a small one (Dual-Space KD and baselines).\n\n"
        "Examples:\n\n"
        "dskd toy --out toy_world          build a CPU teacher, students and data\n\n"
        "dskd train job.yaml --run-dir r   train (resuming from r), then export\n\n"
        "dskd pair-report TEACHER STUDENT  shared vocabulary and the methods that suit the pair\n\n"
        "dskd eval MODEL_DIR dev.jsonl     Rouge-L and exact match of a model or an export\n\n"
        "dskd keys create me; dskd serve   the job service (API, dashboard at /ui/, docs at /docs)\n\n"
        "dskd spec-schema                  the JSON schema of a job spec\n\n"
        "Job specs: see README.md and toy_world/demo.yaml."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = EXIT_BAD_SPEC) -> typer.Exit:
    """Print an error to stderr and return the Exit to raise (no traceback)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def format_validation_error(error: Any) -> str:
    """A pydantic ValidationError as one line per field path: `training.precision: fp16 is not supported…`."""
    lines = []
    for e in error.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(spec)"
        message = e["msg"].removeprefix("Value error, ")
        lines.append(f"  {path}: {message}")
    return "invalid job spec:\n" + "\n".join(lines)
