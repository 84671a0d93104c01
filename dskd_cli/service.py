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


def _service_session():
    from api.cli_support import init_db
    from api.db.session import session_scope
    from api.settings import get_settings

    settings = get_settings()
    init_db(settings)
    return session_scope(settings.database_url)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A unique label for the key, e.g. 'alice-laptop'.")],
    owner: Annotated[
        str | None,
        typer.Option(
            help="The tenant whose jobs and datasets the key shares. Default: a new tenant named like the key "
            "(refused if that tenant exists: name it here to join it)."
        ),
    ] = None,
) -> None:
    """Create an API key and print its secret (shown only this once)."""
    from api.services.keys import KeyRefused, create_api_key, list_api_keys

    with _service_session() as session:
        joins = owner is not None and bool(list_api_keys(session, owner))
        try:
            key, secret = create_api_key(session, name, owner)
        except KeyRefused as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
    tenant = f"joins tenant '{key.owner}'" if joins else f"new tenant '{key.owner}'"
    typer.echo(f"created key '{key.name}' ({key.prefix}…), {tenant}; keep the secret, it is not shown again:")
    typer.echo(secret)


@keys_app.command("list")
def keys_list(
    owner: Annotated[str | None, typer.Option(help="Only the keys of this tenant.")] = None,
) -> None:
    """List the keys (name, prefix, tenant, created, revoked); secrets are never stored."""
    from api.services.keys import list_api_keys

    with _service_session() as session:
        keys = list_api_keys(session, owner)
    rows = [("NAME", "PREFIX", "TENANT", "CREATED", "STATUS")]
    for key in keys:
        status = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        rows.append((key.name, key.prefix, key.owner, f"{key.created_at:%Y-%m-%d %H:%M}", status))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="The key's name, display prefix or id.")],
) -> None:
    """Revoke a key: its requests fail from now on and its open event streams close within seconds."""
    from api.services.keys import find_key, revoke_api_key

    with _service_session() as session:
        found = find_key(session, key)
        if found is None:
            typer.echo(f"error: no key '{key}'", err=True)
            raise typer.Exit(1)
        if not revoke_api_key(session, found.id):
            typer.echo(f"key '{found.name}' was already revoked")
            return
    typer.echo(f"revoked key '{found.name}' ({found.prefix}…) of tenant '{found.owner}'")
