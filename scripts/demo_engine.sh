#!/usr/bin/env bash
# The main job, on CPU, without the service: build the toy world (once, cached in ./toy_world_fast), distil its
# student from its teacher with the world's demo recipe (demo.yaml), export the student, and print the student's
# dev loss before and after (and the teacher's).
#
#   bash scripts/demo_engine.sh                 # the demo recipe (DSKD)
#   METHOD=sft bash scripts/demo_engine.sh      # the same budget with another method: sft, vanilla_kd, dskd
#   STEPS=400 bash scripts/demo_engine.sh       # another budget
#   SIZE=full bash scripts/demo_engine.sh       # the benchmark's larger world
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

METHOD=${METHOD:-dskd}
STEPS=${STEPS:-}
SIZE=${SIZE:-fast}
WORLD=${WORLD:-toy_world}
[ "$SIZE" = fast ] && WORLD=${WORLD%_fast}_fast
RUN_DIR=${RUN_DIR:-runs/demo-$METHOD}
DSKD=".venv/bin/python -m dskd_cli"
start=$SECONDS

echo "== 1/2 toy world ($WORLD: teacher, students, data; built once, then reused)"
$DSKD toy --out "$WORLD" --size "$SIZE"

echo "== 2/2 distilling the student with $METHOD (${STEPS:-the default number of} steps) into $RUN_DIR"
rm -rf "$RUN_DIR"  # a fresh run, so that the 'before' figure is measured (dskd train would resume otherwise)
# The world's demo.yaml holds the pair, the data, its prompt template and the budget (chosen on dev).
$DSKD train "$WORLD/demo.yaml" --run-dir "$RUN_DIR" --method "$METHOD" \
  ${STEPS:+--set training.max_steps="$STEPS"} \
  --set training.log_interval=10 \
  --set data.dev_max_examples=200

echo "== done in $((SECONDS - start)) s. The student loads with"
echo "   AutoModelForCausalLM.from_pretrained('$RUN_DIR/export'); files and hashes in $RUN_DIR/export/manifest.json"
