"""Client commands for datasets: `dskd datasets upload|list|rm` (over the service's HTTP API)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dskd_cli.app import app, fail
from dskd_cli.remote import (
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

datasets_app = typer.Typer(
    help="Datasets on the service (JSONL uploads that jobs name by id).", no_args_is_help=True
)
app.add_typer(datasets_app, name="datasets")


@datasets_app.command("upload")
def upload(
    file: Annotated[Path, typer.Argument(help="A JSON Lines file: one {prompt, response} record per line.")],
    name: Annotated[str | None, typer.Option(help="A label (default: the file name).")] = None,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Upload a dataset (validated by the server) and print its id."""
    if not file.is_file():
        raise fail(f"{file}: no such file")
    with client(url, key) as c, byte_bar(f"uploading {file.name}", file.stat().st_size) as progress:
        dataset = c.datasets.upload(file, name=name, progress=progress)
    typer.echo(f"dataset {dataset.id}: {dataset.row_count} rows, {human_bytes(dataset.size_bytes)}", err=True)
    typer.echo(dataset.id)


@datasets_app.command("list")
def list_datasets(url: UrlOption = None, key: KeyOption = None, as_json: JsonOption = False) -> None:
    """Your datasets."""
    with client(url, key) as c:
        datasets = c.datasets.list()
    if as_json:
        print_json([d.model_dump(mode="json") for d in datasets])
        return
    if not datasets:
        typer.echo("no datasets yet: dskd datasets upload FILE.jsonl", err=True)
        return
    rows = [[d.id, d.name, str(d.row_count), human_bytes(d.size_bytes), when(d.created_at)] for d in datasets]
    print_table(rows, ["ID", "NAME", "ROWS", "SIZE", "CREATED"])


@datasets_app.command("rm")
def remove(
    dataset_id: Annotated[str, typer.Argument(help="The dataset's id.")],
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Delete a dataset (refused while an unfinished job uses it)."""
    with client(url, key) as c:
        c.datasets.delete(dataset_id)
    typer.echo(f"deleted dataset {dataset_id}", err=True)
