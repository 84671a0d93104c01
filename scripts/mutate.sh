#!/usr/bin/env bash
# Mutation testing (mutmut) over the critical modules, one module at a time (docs/testing.md).
#
#   bash scripts/mutate.sh                  # every module below, in order
#   bash scripts/mutate.sh losses auth      # only these
#   MUTATE_CHILDREN=2 bash scripts/mutate.sh
#   MUTATE_SAMPLE=40 bash scripts/mutate.sh  # a fixed sample of 40 mutants per module (a quick estimate)
#
# Each module runs in its own directory .mutmut/<module>/ (symlinks to the code, a pyproject.toml whose
# [tool.mutmut] names that module's files and that module's tests), so each has its own results and a rerun
# resumes where the last one stopped: mutmut keeps every verdict in .mutmut/<module>/mutants/ and only tries
# mutants without one. Delete .mutmut/<module> to start a module over (e.g. after changing its tests).
# mutmut maps each mutated function to the tests that execute it and runs only those, stopping at the first
# failure. Niced, one torch thread: the run is CPU-heavy and meant for the background.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CHILDREN=${MUTATE_CHILDREN:-1}

declare -A FILES TESTS
FILES[losses]='"dskd_core/losses/*"'
TESTS[losses]='"tests/core/test_losses.py", "tests/core/test_losses_edges.py"'
FILES[reduce]='"dskd_core/reduce.py"'
TESTS[reduce]='"tests/core/test_reduce.py", "tests/core/test_reduce_edges.py", "tests/core/test_losses.py"'
FILES[fused]='"dskd_core/fused.py", "dskd_core/fused_terms.py"'
TESTS[fused]='"tests/core/test_fused.py", "tests/core/test_fused_terms.py", "tests/core/test_distillers.py"'
FILES[distillers]='"dskd_core/distillers/*"'
TESTS[distillers]='"tests/core/test_distillers.py", "tests/core/test_cross_distillers.py"'
FILES[alignment]='"dskd_core/alignment/*"'
TESTS[alignment]='"tests/core/test_alignment.py", "tests/core/test_alignment_edges.py"'
FILES[jobs]='"api/services/jobs.py"'
TESTS[jobs]='"tests/api", "tests/worker/test_tasks.py"'
FILES[services]='"api/services/artifacts.py", "api/services/datasets.py", "api/services/events.py", "api/services/submissions.py"'
TESTS[services]='"tests/api"'
FILES[auth]='"api/auth.py", "api/services/keys.py"'
TESTS[auth]='"tests/api"'
ORDER=(losses reduce fused distillers alignment jobs services auth)

modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=("${ORDER[@]}")
for m in "${modules[@]}"; do
  [ -n "${FILES[$m]:-}" ] || { echo "unknown module '$m' (one of: ${ORDER[*]})" >&2; exit 2; }
done

.venv/bin/python -c "import mutmut" 2>/dev/null || .venv/bin/pip install -q "mutmut==3.8.1"
bash scripts/services.sh >/dev/null

for m in "${modules[@]}"; do
  dir=.mutmut/$m
  mkdir -p "$dir"
  for p in dskd_core api worker dskd_cli tests migrations alembic.ini bench; do ln -sfn "$ROOT/$p" "$dir/$p"; done
  # The project's pytest settings plus this module's mutmut section. The toy world is read from the
  # checkout's pytest cache, so forked test runs do not rebuild it.
  {
    cat pyproject.toml
    cat <<EOF

[tool.mutmut]
source_paths = ["dskd_core", "api", "worker", "dskd_cli"]
also_copy = ["migrations", "alembic.ini", "bench"]
only_mutate = [${FILES[$m]}]
pytest_add_cli_args_test_selection = [${TESTS[$m]}]
# The SSE fan-out load test is left out: it measures capacity, not logic, and fails when the machine is busy.
pytest_add_cli_args = ["-o", "cache_dir=$ROOT/.pytest_cache", "-p", "no:randomly", "--ignore=tests/api/test_sse_fanout.py"]
process_isolation = "forkserver"
use_git_change_detection = false
EOF
  } >"$dir/pyproject.toml"
  echo "== $m: $(date -u +%FT%TZ), load: $(cut -d' ' -f1-3 /proc/loadavg)"
  names=""
  if [ -n "${MUTATE_SAMPLE:-}" ]; then
    names=$(cd "$dir" && "$ROOT/.venv/bin/python" "$ROOT/scripts/mutation_sample.py" "$MUTATE_SAMPLE" 2>>run.log)
    [ -n "$names" ] || { .venv/bin/python scripts/mutation_score.py "$dir"; continue; }
  fi
  # shellcheck disable=SC2086  # names: one argument per mutant
  (cd "$dir" && OMP_NUM_THREADS=1 nice -n 10 "$ROOT/.venv/bin/mutmut" run --max-children "$CHILDREN" $names \
    >>run.log 2>&1) || echo "   mutmut exited $? (see $dir/run.log)"
  .venv/bin/python scripts/mutation_score.py "$dir"
done
