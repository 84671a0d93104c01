"""`dskd cache ls|rm`: the teacher cache that KD jobs fill (see README, "Teacher cache")."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from dskd_cli.app import app, fail

cache_app = typer.Typer(help="The teacher cache: list or remove its entries.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

CacheDir = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Cache root (default: $DSKD_CACHE_DIR or ~/.cache/dskd/teacher-cache)."),
]


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


@cache_app.command("ls")
def list_entries(cache_dir: CacheDir = None) -> None:
    """One line per entry (a teacher under one set of numerics): key, examples, size, last use, teacher."""
    from dskd_core.cache import open_cache_dir

    cache = open_cache_dir(cache_dir)
    summaries = cache.summaries()
    typer.echo(f"teacher cache {cache.root}: {len(summaries)} entries")
    if not summaries:
        return
    typer.echo(f"{'key':<26}{'examples':>9}{'size':>11}  {'storage':<8}{'last used':<18}teacher")
    for s in summaries:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.last_used)) if s.last_used else "-"
        storage = f"{s.info.get('storage_dtype', '?')}/{s.info.get('precision', '?')}"
        typer.echo(
            f"{s.key:<26}{s.examples:>9}{human_bytes(s.bytes):>11}  {storage:<8}{used:<18}{s.info.get('teacher', '?')}"
        )
    total = sum(s.bytes for s in summaries)
    cap = f" of {human_bytes(cache.max_bytes)}" if cache.max_bytes else ""
    typer.echo(f"total {human_bytes(total)}{cap}")


@cache_app.command("rm")
def remove_entries(
    keys: Annotated[
        list[str] | None, typer.Argument(help="Entry keys (or unique prefixes), as `dskd cache ls` shows.")
    ] = None,
    all_entries: Annotated[bool, typer.Option("--all", help="Remove every entry.")] = False,
    cache_dir: CacheDir = None,
) -> None:
    """Remove entries; a job that needs them again recomputes them."""
    from dskd_core.cache import open_cache_dir

    cache = open_cache_dir(cache_dir)
    if all_entries == bool(keys):
        raise fail("give entry keys or --all (not both)")
    known = [e.key for e in cache.entries()]
    targets = known if all_entries else []
    for prefix in keys or []:
        matches = [k for k in known if k.startswith(prefix)]
        if len(matches) != 1:
            raise fail(
                f"{prefix!r} matches {len(matches)} entries of {cache.root}; `dskd cache ls` lists them"
            )
        targets += matches
    for key in targets:
        cache.remove(key)
        typer.echo(f"removed {key}")
