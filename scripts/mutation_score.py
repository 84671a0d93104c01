"""Summarise one module's mutmut verdicts: counts per status, the score, and the surviving mutants.

    .venv/bin/python scripts/mutation_score.py .mutmut/losses [--survivors]

Score = (killed + timeout) / every mutant that got a verdict. "no tests" (no selected test executes the
mutated function) counts against the score: an unexecuted line is an untested one. Mutants not yet tried
(an interrupted run) are reported apart and left out.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code


def verdicts(module_dir: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for meta in sorted((module_dir / "mutants").rglob("*.py.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            out[name] = status_by_exit_code[code]
    return out


def main(argv: list[str]) -> int:
    module_dir = Path(argv[0])
    found = verdicts(module_dir)
    sample = module_dir / "sample.txt"  # a sampled run (MUTATE_SAMPLE): score the sample only
    if sample.exists():
        found = {name: found[name] for name in sample.read_text().split()}
    counts = Counter(found.values())
    tried = sum(n for status, n in counts.items() if status != "not checked")
    caught = counts["killed"] + counts["timeout"]
    score = f"{100 * caught / tried:.1f}%" if tried else "n/a"
    parts = ", ".join(f"{status} {n}" for status, n in sorted(counts.items()))
    kind = f"sample of {len(found)}" if sample.exists() else "all mutants"
    print(f"{module_dir.name} ({kind}): score {score} ({caught}/{tried}); {parts}")
    survivors = sorted(n for n, s in found.items() if s in {"survived", "no tests", "suspicious"})
    (module_dir / "survivors.txt").write_text("".join(f"{found[n]}\t{n}\n" for n in survivors))
    if "--survivors" in argv:
        for name in survivors:
            print(f"  {found[name]:9} {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
