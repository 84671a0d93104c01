"""Print a fixed sample of one module's mutants that still lack a verdict (for `MUTATE_SAMPLE=N`).

    cd .mutmut/<module> && ../../.venv/bin/python ../../scripts/mutation_sample.py N

Generates the mutants first when the directory has none (mutmut's own generation steps, no test run). The
sample is the N names with the smallest SHA-1, so it is the same on every machine and every rerun: a rerun
prints only the sampled mutants not tried yet, which makes a sampled run resumable too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from pathlib import Path


def generate() -> None:
    from mutmut.__main__ import create_mutants, store_lines_covered_by_tests
    from mutmut.utils.file_utils import copy_also_copy_files, copy_src_dir, setup_source_paths

    Path("mutants").mkdir(exist_ok=True)
    copy_src_dir()
    copy_also_copy_files()
    setup_source_paths()
    store_lines_covered_by_tests()
    create_mutants(os.cpu_count() or 1)


def main(n: int) -> int:
    if not list(Path("mutants").rglob("*.py.meta")):
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the names
            generate()
    verdict: dict[str, int | None] = {}
    for meta in Path("mutants").rglob("*.py.meta"):
        verdict.update(json.loads(meta.read_text())["exit_code_by_key"])
    sample = sorted(verdict, key=lambda name: hashlib.sha1(name.encode()).hexdigest())[:n]
    (Path("sample.txt")).write_text("".join(f"{name}\n" for name in sample))
    print(" ".join(name for name in sample if verdict[name] is None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(int(sys.argv[1])))
