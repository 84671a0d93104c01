#!/usr/bin/env bash
# The main job, through the service, on CPU: start the embedded stack (API + worker on SQLite, nothing to install),
# build the toy world (once, cached in ./toy_world_fast), submit a DSKD job over REST (and an SFT job with the
# same budget, for contrast), stream its progress (SSE), download the students, load them with plain transformers
# and score them next to the teacher on held-out test prompts (Rouge-L, and the student/teacher ratio).
#
#   make demo                    # defaults: SIZE=fast, the world the tests use (built in a few minutes, once)
#   STEPS=600 make demo          # another budget (default: the world's demo.yaml)
#   SFT=0 make demo              # without the SFT contrast job
#   SIZE=full make demo          # the benchmark's larger world (a much longer first build)
# The engine alone, without the service: scripts/demo_engine.sh (METHOD=sft|vanilla_kd|dskd).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# The toy models are tiny: a second torch thread gains little, and oversubscribed threads on a busy machine cost a lot.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

SIZE=${SIZE:-fast}
WORLD=${WORLD:-toy_world}
[ "$SIZE" = fast ] && WORLD=${WORLD%_fast}_fast
STEPS=${STEPS:-}
SFT=${SFT:-1}
PORT=${PORT:-$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
DSKD=".venv/bin/python -m dskd_cli"
start=$SECONDS

echo "== 1/3 toy world ($WORLD: pretrained students, a pretrained + instruction-tuned teacher, data; built once)"
$DSKD toy --out "$WORLD" --size "$SIZE"

# A fresh embedded service for the demo; the toy world is its models root (jobs name models by path under it).
export DSKD_DATA_DIR=${DSKD_DATA_DIR:-.dskd-demo}
export DSKD_MODELS_ROOT="$(cd "$WORLD" && pwd -P)"
OUT=${OUT:-runs/demo-service}  # where the students are downloaded
rm -rf "$DSKD_DATA_DIR" "$OUT"
KEY=$($DSKD keys create demo | tail -n 1)

echo "== 2/3 starting the service on http://127.0.0.1:$PORT (API docs at /docs, dashboard at /ui/)"
$DSKD serve --port "$PORT" > "$DSKD_DATA_DIR/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT

echo "== 3/3 the client: upload, submit, stream, download, load and answer"
.venv/bin/python scripts/demo_client.py --url "http://127.0.0.1:$PORT" --key "$KEY" --world "$WORLD" --out "$OUT" \
  ${STEPS:+--steps "$STEPS"} $([ "$SFT" = 0 ] && echo --no-sft) \
  || { echo "-- service log ($DSKD_DATA_DIR/serve.log):"; tail -n 40 "$DSKD_DATA_DIR/serve.log"; exit 1; }
echo "== done in $((SECONDS - start)) s (service log: $DSKD_DATA_DIR/serve.log)"
