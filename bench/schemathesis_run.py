"""A bounded Schemathesis run against a live API process: every phase (examples, coverage, fuzzing, stateful),
every check, a fixed seed. Prints the number of generated cases, the failures by check, and the number of 5xx
answers counted in the server's own access log (independent of Schemathesis). The default tests run it
(tests/api/test_schemathesis.py); from the command line:

    .venv/bin/python bench/schemathesis_run.py --max-examples 25

Checks configuration: `schemathesis.toml` next to this file. One relaxation, and why: the `positive_data_
acceptance` check expects a schema-valid request to succeed, but some of them are refused on purpose with a
precise 422 — a `data.dataset_id` that names no dataset, a JSONL upload with no records, a `cursor` this API did
not issue. 422 is therefore an accepted answer to schema-valid data for those operations; every other check,
and that check's other expectations, stay as they are.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIG = HERE / "schemathesis.toml"
_ACCESS = re.compile(r'"[A-Z]+ [^"]*" (\d{3})')


def run(database_url: str, work_dir: Path, *, max_examples: int = 25, seed: int = 1) -> dict[str, Any]:
    from bench.concurrency import seed as seed_tenants
    from bench.concurrency import start_server, wait_ready
    from tests.e2e.conftest import free_port

    work_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = work_dir / "api.log"
    proc = start_server(database_url, work_dir / "data", port, log_path, access_log=True)
    base_url = f"http://127.0.0.1:{port}"
    report = work_dir / "report.json"
    try:
        wait_ready(base_url, proc)
        key = seed_tenants(base_url, database_url)[0]["key"]
        argv = [
            sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run",
            f"{base_url}/openapi.json", "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
            "--max-examples", str(max_examples), "--seed", str(seed), "--request-timeout", "30",
            "-H", f"Authorization: Bearer {key}", "--report", "json", "--report-json-path", str(report),
        ]  # fmt: skip
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    statuses = Counter(int(m.group(1)) for m in _ACCESS.finditer(log_path.read_text(errors="replace")))
    result = json.loads(report.read_text()) if report.is_file() else {}
    return {
        "cases": result.get("test_cases", {}).get("generated", 0),
        "phases": {k: v.get("status") for k, v in result.get("phases", {}).items()},
        "failures": [
            {"code": f["code"], "title": f["title"], "operations": f["operations"]}
            for f in result.get("failures", [])
        ],
        "errors": result.get("errors", []),
        "responses": sum(statuses.values()),
        "server_errors": sum(n for status, n in statuses.items() if status >= 500),
        "statuses": dict(sorted(statuses.items())),
        "exit_code": done.returncode,
        "output_tail": done.stdout[-3000:],
    }


def main() -> None:
    sys.path.insert(0, str(ROOT))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-examples", type=int, default=25)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    from alembic import command

    from api.cli_support import alembic_config
    from tests.api.conftest import create_pg_database, drop_pg_database

    name, url = create_pg_database()
    try:
        command.upgrade(alembic_config(url), "head")
        with tempfile.TemporaryDirectory() as tmp:
            out = run(url, Path(tmp), max_examples=args.max_examples, seed=args.seed)
    finally:
        drop_pg_database(name, url)
    tail = out.pop("output_tail")
    print(json.dumps(out, indent=2))
    if out["failures"] or out["server_errors"]:
        print(tail)


if __name__ == "__main__":
    main()
