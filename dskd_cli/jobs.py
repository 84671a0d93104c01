"""Client commands for jobs: `dskd jobs submit|list|get|watch|cancel|download|metrics` (over the HTTP API)."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Annotated, Any

import typer

from dskd_cli.app import app, fail
from dskd_cli.engine import override_dict
from dskd_cli.remote import (
    EXIT_API_ERROR,
    JsonOption,
    KeyOption,
    UrlOption,
    byte_bar,
    client,
    human_bytes,
    print_json,
    print_table,
    when,
)

jobs_app = typer.Typer(
    help="Distillation jobs on the service: submit, follow, cancel, download.", no_args_is_help=True
)
app.add_typer(jobs_app, name="jobs")

STATUSES = ["queued", "running", "cancel_requested", "succeeded", "failed", "cancelled"]
SHOWN_METRICS = ("loss", "ce", "kd", "lr")


def read_spec(path: Path, overrides: list[str]) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise fail(f"{path}: no such spec file")
    try:
        raw = yaml.safe_load(path.read_text())  # JSON is YAML too
    except yaml.YAMLError as e:
        raise fail(f"{path}: {e}") from None
    if not isinstance(raw, dict):
        raise fail(f"{path}: a job spec is a mapping (teacher, student, data, distill, training)")
    return override_dict(raw, overrides)


def _data_file(
    spec: dict[str, Any], spec_path: Path, given: Path | None, *, dev: bool = False
) -> Path | None:
    """The file to upload: --data (--dev-data), else the spec's data.path (data.dev_path), relative to the spec
    file, when the spec names no dataset id for it."""
    section = spec.setdefault("data", {})
    path_key, id_key = ("dev_path", "dev_dataset_id") if dev else ("path", "dataset_id")
    if given is not None:
        return given
    if section.get(id_key) or not section.get(path_key):
        return None
    path = Path(section[path_key])
    return path if path.is_absolute() else spec_path.parent / path


@jobs_app.command("submit")
def submit(
    spec_file: Annotated[Path, typer.Argument(metavar="SPEC", help="Job spec (YAML or JSON).")],
    data: Annotated[
        Path | None, typer.Option("--data", help="Upload this JSONL file as the job's data.")
    ] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Use an uploaded dataset by id.")] = None,
    dev_data: Annotated[
        Path | None, typer.Option("--dev-data", help="Upload this JSONL file as the job's dev set.")
    ] = None,
    dev_dataset: Annotated[
        str | None, typer.Option("--dev-dataset", help="Use an uploaded dataset by id as the dev set.")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a setting, e.g. --set training.max_steps=200.")
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Makes a repeated submit return the same job instead of a new one.")
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Follow the job until it finishes.")] = False,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Submit a job; prints its id. Models are hub ids or paths under the server's models root.

    The spec's data.path and data.dev_path (relative to the spec file) are uploaded unless --dataset or
    --dev-dataset (or the spec's own ids) name uploaded datasets; the job then refers to them by id.
    """
    if data is not None and dataset is not None:
        raise fail("give --data FILE or --dataset ID, not both")
    if dev_data is not None and dev_dataset is not None:
        raise fail("give --dev-data FILE or --dev-dataset ID, not both")
    spec = read_spec(spec_file, overrides or [])
    section = spec.setdefault("data", {})
    upload = None if dataset else _data_file(spec, spec_file, data)
    dev_upload = None if dev_dataset else _data_file(spec, spec_file, dev_data, dev=True)
    for path in (upload, dev_upload):
        if path is not None and not path.is_file():
            raise fail(f"{path}: no such data file")
    section.pop("path", None)
    section.pop("dev_path", None)
    with client(url, key) as c:
        for path, given, id_key in (
            (upload, dataset, "dataset_id"),
            (dev_upload, dev_dataset, "dev_dataset_id"),
        ):
            if path is not None:
                with byte_bar(f"uploading {path.name}", path.stat().st_size) as progress:
                    section[id_key] = c.datasets.upload(path, progress=progress).id
            elif given:
                section[id_key] = given
        job = c.jobs.create(spec, idempotency_key=idempotency_key)
        dev = f", dev dataset {job.dev_dataset_id}" if job.dev_dataset_id else ""
        typer.echo(f"job {job.id} {job.status} (dataset {section.get('dataset_id')}{dev})", err=True)
        typer.echo(job.id)
        if watch:
            _watch(c, job.id)


@jobs_app.command("list")
def list_jobs(
    status: Annotated[
        list[str] | None, typer.Option("--status", help=f"Only these statuses ({', '.join(STATUSES)}).")
    ] = None,
    limit: Annotated[int, typer.Option(help="Jobs per page.", min=1, max=200)] = 20,
    cursor: Annotated[str | None, typer.Option(help="Continue after a previous page.")] = None,
    all_pages: Annotated[bool, typer.Option("--all", help="Every page.")] = False,
    url: UrlOption = None,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Your jobs, newest first."""
    with client(url, key) as c:
        if all_pages:
            jobs, next_cursor = list(c.jobs.iter(status=status)), None
        else:
            page = c.jobs.list(status=status, limit=limit, cursor=cursor)
            jobs, next_cursor = page.items, page.next_cursor
    if as_json:
        print_json({"items": [j.model_dump(mode="json") for j in jobs], "next_cursor": next_cursor})
        return
    if not jobs:
        typer.echo(
            "no jobs" + (" with that status" if status else ": dskd jobs submit SPEC --data FILE"), err=True
        )
        return
    rows = [
        [
            j.id,
            (j.name or "-")[:28],
            str(j.spec.get("distill", {}).get("method", "-")),
            j.status,
            f"{j.progress.step or 0}/{j.progress.total_steps or '?'}",
            _duration(j.progress.elapsed_seconds),
            _dev(j),
            when(j.created_at),
        ]
        for j in jobs
    ]
    print_table(rows, ["ID", "NAME", "METHOD", "STATUS", "STEP", "TIME", "DEV CE", "CREATED"])
    if next_cursor:
        typer.echo(f"more: dskd jobs list --cursor {next_cursor}", err=True)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


def _dev(job: Any) -> str:
    metrics = job.progress.metrics or {}
    value = metrics.get("dev_ce")
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


@jobs_app.command("get")
def get(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    url: UrlOption = None,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """A job's status, progress, metrics and error."""
    with client(url, key) as c:
        job = c.jobs.get(job_id)
    if as_json:
        print_json(job.model_dump(mode="json"))
        return
    distill, student = job.spec.get("distill", {}), job.spec.get("student", {})
    lines = [
        f"job       {job.id}" + (f"  ({job.name})" if job.name else ""),
        f"status    {job.status}  (attempt {job.attempt}/{job.max_attempts})",
        f"method    {distill.get('method', '-')}  student {student.get('name_or_path', '-')}",
        f"progress  step {job.progress.step or 0}/{job.progress.total_steps or '?'}, "
        f"{_duration(job.progress.elapsed_seconds)}"
        + (
            f", ETA {_duration(job.progress.eta_seconds)}"
            if job.progress.eta_seconds and not job.is_terminal
            else ""
        ),
        f"created   {when(job.created_at)}  finished {when(job.finished_at)}",
    ]
    metrics = {k: v for k, v in (job.progress.metrics or {}).items() if isinstance(v, int | float)}
    if metrics:
        lines.append("metrics   " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())))
    if job.error:
        lines.append(f"error     [{job.error.code}] {job.error.message}")
    typer.echo("\n".join(lines))


def _watch(c: Any, job_id: str) -> None:
    """Live progress bar from the event stream; exits 1 unless the job succeeds."""
    from tqdm import tqdm

    bar: Any = None

    def on_event(event: Any) -> None:
        nonlocal bar
        payload = event.payload
        total = payload.get("total_steps")
        if bar is None and total:
            bar = tqdm(total=total, unit="step", dynamic_ncols=True, desc=job_id[:8])
        write = bar.write if bar is not None else typer.echo
        if event.type == "progress" and bar is not None:
            bar.update(max(0, payload.get("step", 0) - bar.n))
            shown = {k: payload["metrics"][k] for k in SHOWN_METRICS if k in payload.get("metrics", {})}
            bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=True)
        elif event.type == "eval":
            scores = ", ".join(f"{k} {v:.4g}" for k, v in payload.get("metrics", {}).items())
            write(f"eval @ step {payload.get('step')}: {scores}")
        elif event.type == "status":
            write(f"status: {payload.get('status')}")
        elif payload.get("message"):
            write(str(payload["message"]))

    try:
        job = c.jobs.wait(job_id, on_event=on_event)
    finally:
        if bar is not None:
            bar.close()
    if job.error:
        typer.echo(f"error [{job.error.code}]: {job.error.message}", err=True)
    if job.status != "succeeded":
        raise typer.Exit(EXIT_API_ERROR)


@jobs_app.command("watch")
def watch(
    job_id: Annotated[str, typer.Argument(help="The job's id.")], url: UrlOption = None, key: KeyOption = None
) -> None:
    """Follow a job live (progress bar, evaluations) until it ends; exit code 0 only if it succeeded."""
    with client(url, key) as c:
        _watch(c, job_id)


@jobs_app.command("cancel")
def cancel(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Cancel a job (a running one stops at its next step and keeps a checkpoint)."""
    if not yes and not typer.confirm(f"cancel job {job_id}?"):
        raise typer.Exit(1)
    with client(url, key) as c:
        job = c.jobs.cancel(job_id)
    typer.echo(f"job {job.id}: {job.status}")


@jobs_app.command("download")
def download(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    name: Annotated[
        str, typer.Argument(help="The artifact (see dskd jobs get; default the whole student).")
    ] = "student.tar",
    out: Annotated[Path, typer.Option("--out", help="Directory to write into.")] = Path("."),
    extract: Annotated[bool, typer.Option("--extract", help="Unpack a tar after the download.")] = False,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Download an artifact (resumes a partial download, checks its sha256); prints the file's path."""
    out.mkdir(parents=True, exist_ok=True)
    with client(url, key) as c:
        artifact = c.artifacts.get(job_id, name)
        with byte_bar(f"downloading {name}", artifact.size_bytes) as progress:
            path = c.artifacts.download(job_id, name, out, progress=progress)
    typer.echo(
        f"{path}: {human_bytes(artifact.size_bytes)}, sha256 {artifact.sha256[:16]}… verified", err=True
    )
    if extract and tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            tar.extractall(out, filter="data")
        typer.echo(f"extracted into {out}", err=True)
    typer.echo(str(path))


@jobs_app.command("metrics")
def metrics(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    max_points: Annotated[int | None, typer.Option(help="Downsample each series.", min=1)] = None,
    url: UrlOption = None,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """A job's metric history (each series' first and last value, or all points with --json)."""
    with client(url, key) as c:
        history = c.jobs.metrics(job_id, max_points=max_points)
    if as_json:
        print_json(history.model_dump(mode="json"))
        return
    rows = [
        [
            s.kind,
            s.name,
            str(len(s.steps)),
            f"{s.values[0]:.4g} @ {s.steps[0]}",
            f"{s.values[-1]:.4g} @ {s.steps[-1]}",
        ]
        for s in history.series
        if s.steps
    ]
    print_table(rows, ["KIND", "METRIC", "POINTS", "FIRST", "LAST"])
