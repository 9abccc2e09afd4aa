#!/usr/bin/env bash
# One prepared GPU check (at most ~10 minutes on one GPU): the GPU test subset, 100 training steps of
# the embedded model in bf16, an eval of it on the GPU, the throughput benchmark with --device cuda,
# and serving latency; then one summary table. Run from the repository root after ./install.sh --dev
# (on a GPU machine pip gives torch's CUDA build). Writes everything under ${OUT:-gpu-check}/.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
declare -A STATUS SECONDS_TAKEN

step() {  # step NAME COMMAND...: run, time, keep the log, never stop the script
  local name=$1; shift
  local t0=$SECONDS
  echo "== $name: $*"
  if "$@" >"$OUT/$name.log" 2>&1; then STATUS[$name]=ok; else STATUS[$name]="FAILED (rc $?)"; fi
  SECONDS_TAKEN[$name]=$((SECONDS - t0))
  tail -n 3 "$OUT/$name.log"
}

"$PY" - <<'PY' | tee "$OUT/device.txt"
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
PY

step tests "$PY" -m pytest tests/test_devices.py tests/test_packing.py -q -x
step synth "$PY" -m fspo synth --domain reviews --backend none --users 32 --questions 12 --out "$OUT/data" --no-embed --quiet
step train "$PY" -m fspo train --data "$OUT/data" --model smollm2 --model.dtype bf16 --loss sft+ipo \
  --optim.sft_steps 20 --steps 80 --lr 1e-5 --optim.batch_size 4 --optim.shared_prefix \
  --loss.sft_weight 1.0 --data.max_length 640 --out "$OUT/run" --overwrite --progress false
step eval "$PY" -m fspo eval --data "$OUT/data" --model "$OUT/run" --methods base,fewshot,fspo-ipo \
  --users 8 --queries 3 --shots-curve 0,4 --device cuda --dtype bf16 --out "$OUT/eval" --quiet
step throughput "$PY" bench/train_throughput.py --device cuda --rounds 1 --steps 2 --json "$OUT/throughput.json"
step serve_latency "$PY" bench/serve_latency.py --repeats 5

echo
echo "| step | status | seconds | last line |"
echo "|---|---|---|---|"
for name in tests synth train eval throughput serve_latency; do
  last=$(grep -v '^\s*$' "$OUT/$name.log" 2>/dev/null | tail -n 1 | cut -c1-100)
  echo "| $name | ${STATUS[$name]:-not run} | ${SECONDS_TAKEN[$name]:-} | $last |"
done | tee "$OUT/summary.md"
grep -h "speedup_vs_trl\|warm_cold" "$OUT"/throughput.log "$OUT"/serve_latency.log 2>/dev/null | tail -n 6
