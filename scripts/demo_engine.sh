#!/usr/bin/env bash
# The main job, on CPU: build the toy world (once, cached in ./toy_world), distil its student from its teacher
# with DSKD, export the student, and print the student's dev loss before and after (and the teacher's).
#
#   bash scripts/demo.sh                 # DSKD
#   METHOD=sft bash scripts/demo.sh      # the same budget with another method: sft, vanilla_kd, dskd
#   STEPS=400 bash scripts/demo.sh       # a longer run
#   SIZE=fast WORLD=toy_world_fast bash scripts/demo.sh   # the small world the tests use (a quick check)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

METHOD=${METHOD:-dskd}
STEPS=${STEPS:-150}
WORLD=${WORLD:-toy_world}
SIZE=${SIZE:-full}
RUN_DIR=${RUN_DIR:-runs/demo-$METHOD}
DSKD=".venv/bin/python -m dskd_cli"
start=$SECONDS

echo "== 1/2 toy world ($WORLD: teacher, students, data; built once, then reused)"
$DSKD toy --out "$WORLD" --size "$SIZE"

echo "== 2/2 distilling the student with $METHOD ($STEPS steps) into $RUN_DIR"
rm -rf "$RUN_DIR"  # a fresh run, so that the 'before' figure is measured (dskd train would resume otherwise)
# The world's demo.yaml holds the pair, the data and its prompt template; the budget is set here.
$DSKD train "$WORLD/demo.yaml" --run-dir "$RUN_DIR" --method "$METHOD" \
  --set training.max_steps="$STEPS" \
  --set training.batch_size=16 \
  --set training.lr=2e-3 \
  --set training.warmup_ratio=0.05 \
  --set training.eval_interval=50 \
  --set training.checkpoint_interval=50 \
  --set training.log_interval=5 \
  --set data.dev_max_examples=200

echo "== done in $((SECONDS - start)) s. The student loads with"
echo "   AutoModelForCausalLM.from_pretrained('$RUN_DIR/export'); files and hashes in $RUN_DIR/export/manifest.json"
