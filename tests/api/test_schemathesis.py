"""A bounded Schemathesis run against the live API (every phase including stateful, every check, fixed seed):
at least 500 generated cases, no check failing, and no 5xx in the server's own access log."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.schemathesis_run import run

pytest.importorskip("schemathesis", reason="pip install schemathesis (a dev dependency)")


def test_schemathesis_finds_nothing(db_url: str, tmp_path: Path) -> None:
    result = run(db_url, tmp_path, max_examples=25, seed=1)
    print({k: v for k, v in result.items() if k != "output_tail"})
    assert result["cases"] >= 500, result["output_tail"]
    assert set(result["phases"]) == {"examples", "coverage", "fuzzing", "stateful"}
    assert result["failures"] == [] and result["errors"] == [], result["output_tail"]
    assert result["responses"] >= result["cases"] and result["server_errors"] == 0, result["statuses"]
