"""Service commands: `dskd serve` (API, dashboard and a worker) and `dskd keys` (API keys)."""

from __future__ import annotations

from typing import Annotated

import typer

from dskd_cli.app import app


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port of the API and dashboard.")] = 8000,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="Serve the API only (workers run elsewhere).")
    ] = False,
) -> None:
    """Start the service: API + dashboard and one worker, on SQLite in DSKD_DATA_DIR (default ./.dskd)."""
    from worker.serve import serve as run_service

    run_service(host=host, port=port, with_worker=not no_worker)


keys_app = typer.Typer(help="API keys of the service.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A label for the key, e.g. 'laptop'.")],
    owner: Annotated[
        str | None, typer.Option(help="Whose jobs the key sees (default: the key's name).")
    ] = None,
) -> None:
    """Create an API key and print its secret (shown only this once)."""
    from api.cli_support import init_db
    from api.db.session import session_scope
    from api.services.keys import create_api_key
    from api.settings import get_settings

    settings = get_settings()
    init_db(settings)
    with session_scope(settings.database_url) as session:
        key, secret = create_api_key(session, name, owner or name)
    typer.echo(f"created key {key.prefix}… for owner '{key.owner}'; keep the secret, it is not shown again:")
    typer.echo(secret)
