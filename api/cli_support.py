"""What the `dskd` CLI needs from the service: migrate the database, make keys, build the app."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from api.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS_DIR = REPO_ROOT / "migrations"


def alembic_config(database_url: str) -> Config:
    """An Alembic config for this repository's migrations, pointed at database_url (no alembic.ini needed)."""
    config = Config(str(REPO_ROOT / "alembic.ini")) if (REPO_ROOT / "alembic.ini").exists() else Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation: a literal % in a URL (encoded password) must be doubled.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["configure_logging"] = False
    return config


def init_db(settings: Settings) -> None:
    """Create the data directories and bring the database to the newest schema (`alembic upgrade head`)."""
    settings.ensure_dirs()
    command.upgrade(alembic_config(settings.database_url), "head")
