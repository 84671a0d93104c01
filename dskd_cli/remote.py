"""What the client commands (`dskd jobs`, `dskd datasets`) share: the server and key options, the client, errors
as one readable message, and byte progress bars."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any

import typer

from dskd_cli.app import fail

EXIT_API_ERROR = 1

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="DSKD_API_URL",
        help="The service (default http://127.0.0.1:8000).",
        show_default=False,
    ),
]
KeyOption = Annotated[
    str | None,
    typer.Option(
        "--key", envvar="DSKD_API_KEY", help="An API key (dskd keys create NAME).", show_default=False
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of a table.")]


@contextlib.contextmanager
def client(url: str | None, key: str | None) -> Iterator[Any]:
    """A `dskd_client.Client`; any client error ends the command with its message (exit code 1)."""
    import httpx

    from dskd_client import ApiError, Client, DskdClientError

    try:
        with Client(url, key) as c:
            yield c
    except ApiError as e:
        hint = f" (request id {e.request_id})" if e.request_id and e.status >= 500 else ""
        raise fail(f"{e}{hint}", EXIT_API_ERROR) from None
    except DskdClientError as e:
        raise fail(str(e), EXIT_API_ERROR) from None
    except httpx.TransportError as e:  # connection refused, DNS, timeouts
        raise fail(f"cannot reach the service: {e}", EXIT_API_ERROR) from None


@contextlib.contextmanager
def byte_bar(description: str, total: int) -> Iterator[Any]:
    """A tqdm bar in bytes; yields the `progress(done, total)` callback the client takes."""
    from tqdm import tqdm

    with tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=description, dynamic_ncols=True,
        disable=None,  # no bar when stderr is not a terminal (logs, CI)
        file=sys.stderr,
    ) as bar:  # fmt: skip

        def progress(done: int, _total: int) -> None:
            bar.update(done - bar.n)

        yield progress


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        typer.echo("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def when(moment: datetime | None) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
