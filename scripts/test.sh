#!/usr/bin/env bash
# The default test run. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
bash scripts/browser.sh
exec .venv/bin/python -m pytest -q "$@"
