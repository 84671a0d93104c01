"""API keys: unique names, joining a tenant only when named, `dskd keys create|list|revoke`, and the migration
that makes existing duplicate names unique."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, pool, text
from typer.testing import CliRunner

from api.cli_support import alembic_config
from api.services.keys import KeyRefused, create_api_key, find_active_key, revoke_api_key
from api.settings import get_settings
from dskd_cli.main import app


def test_names_are_unique_and_tenants_are_joined_explicitly(session) -> None:
    laptop, _ = create_api_key(session, "laptop")
    assert laptop.owner == "laptop"
    with pytest.raises(KeyRefused, match="a key named 'laptop' already exists"):
        create_api_key(session, "laptop")
    with pytest.raises(KeyRefused, match="a key named 'laptop' already exists"):
        create_api_key(session, "laptop", "someone-else")
    second, secret = create_api_key(session, "laptop-2", "laptop")  # joins, because the tenant is named
    assert second.owner == "laptop" and find_active_key(session, secret).owner == "laptop"
    create_api_key(session, "ci-key", "team")
    with pytest.raises(KeyRefused, match=r"tenant .team. already exists.*--owner team"):
        create_api_key(session, "team")  # would silently share team's jobs
    for bad in ("", "   ", "x" * 201, "tab\there"):
        with pytest.raises(KeyRefused):
            create_api_key(session, bad)


def test_revoke_by_name_prefix_or_id(session) -> None:
    keys = [create_api_key(session, f"k{i}", "t") for i in range(3)]
    refs = ["k0", keys[1][0].prefix, keys[2][0].id]
    for (_key, secret), ref in zip(keys, refs, strict=True):
        assert find_active_key(session, secret) is not None
        assert revoke_api_key(session, ref)
        assert find_active_key(session, secret) is None
        assert not revoke_api_key(session, ref)
    assert not revoke_api_key(session, "no-such-key")


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.setenv("DSKD_DATA_DIR", str(tmp_path / "dskd"))
    for name in ("DSKD_DATABASE_URL", "DSKD_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield CliRunner()
    get_settings.cache_clear()


def test_keys_cli(cli_env: CliRunner) -> None:
    created = cli_env.invoke(app, ["keys", "create", "laptop"])
    assert created.exit_code == 0, created.output
    secret = created.output.strip().splitlines()[-1]
    assert secret.startswith("dskd_") and "new tenant 'laptop'" in created.output
    again = cli_env.invoke(app, ["keys", "create", "laptop"])
    assert again.exit_code == 1 and "a key named 'laptop' already exists" in again.output
    joined = cli_env.invoke(app, ["keys", "create", "desktop", "--owner", "laptop"])
    assert joined.exit_code == 0 and "joins tenant 'laptop'" in joined.output

    listed = cli_env.invoke(app, ["keys", "list"])
    assert listed.exit_code == 0
    lines = listed.output.strip().splitlines()
    assert lines[0].split() == ["NAME", "PREFIX", "TENANT", "CREATED", "STATUS"]
    assert [line.split()[0] for line in lines[1:]] == ["laptop", "desktop"]
    assert secret not in listed.output and all(line.endswith("active") for line in lines[1:])

    revoked = cli_env.invoke(app, ["keys", "revoke", "laptop"])
    assert revoked.exit_code == 0 and "revoked key 'laptop'" in revoked.output
    assert "revoked" in cli_env.invoke(app, ["keys", "list", "--owner", "laptop"]).output.splitlines()[1]
    assert cli_env.invoke(app, ["keys", "revoke", "nothing"]).exit_code == 1


def test_migration_renames_duplicate_names(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    config = alembic_config(url)
    command.upgrade(config, "0001")
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.begin() as conn:
        for i, name in enumerate(["laptop", "laptop", "laptop-2", "laptop"]):
            conn.execute(
                text(
                    "INSERT INTO api_keys (id, name, owner, key_hash, prefix, created_at) "
                    "VALUES (:id, :name, :name, :hash, 'p', :at)"
                ),
                {"id": f"{i:032d}", "name": name, "hash": f"h{i}", "at": f"2024-01-0{i + 1} 00:00:00"},
            )
    command.upgrade(config, "head")
    with engine.connect() as conn:
        names = [r[0] for r in conn.execute(text("SELECT name FROM api_keys ORDER BY id"))]
    engine.dispose()
    assert names == ["laptop", "laptop-3", "laptop-2", "laptop-4"]
