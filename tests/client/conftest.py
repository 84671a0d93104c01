from tests.api.conftest import db_url, pg_url  # noqa: F401  (re-exported fixtures)
from tests.live_service import live  # noqa: F401
