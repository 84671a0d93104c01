"""Entry point of the `dskd` command: importing a group's module registers its commands on the app."""

from __future__ import annotations

from dskd_cli import cache, datasets, engine, jobs, service  # noqa: F401  (registers the commands)
from dskd_cli.app import app


def main() -> None:
    app(prog_name="dskd")
