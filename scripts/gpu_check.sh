#!/usr/bin/env bash
# Every CUDA path of cifar-resnet, in one run on one GPU (a few minutes): one line per check, a
# summary, and a non-zero exit status if any check failed.
#
#   scripts/gpu_check.sh             # on a machine with CUDA
#   scripts/gpu_check.sh --dry-run   # the same checks on the CPU, small; the CUDA-only ones skipped
#
# Checks: bench (fp32/bf16/fp16; eager, trace, script, frozen; then compile and aoti, last and each in its
# own process, since they take minutes and a crash in one must not hide the others; no variant may be
# WRONG), train a few hundred steps with --amp fp16 and --amp bf16 and channels-last, Ctrl-C and resume,
# torchrun --nproc-per-node 1 (nccl), export --method all on the device (TorchScript, an AOTInductor
# package compiled for CUDA, ONNX verified in ONNX Runtime on the CPU) and predict with the CUDA
# package, eval of the checkpoint on the device, and the test suite's gpu-marked tests. Where torch's
# AOTInductor loader crashes on CUDA packages (torch 2.11.0+cu130 on an H200), export leaves the package
# out with a warning (a NOTE line) and predicts with the first archive, and the aoti bench fails saying
# so in one line. A dry run
# exports trace and onnx only (an AOTInductor compile costs 20 s of CPU; tests/test_archives.py covers
# it). Logs: $GPU_CHECK_LOGS (kept; each bench's JSON too) or a temporary folder (removed); a check
# that crashes leaves Python's stack in its log (faulthandler). PYTHON overrides the interpreter (default
# .venv/bin/python).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: scripts/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
PY=${PYTHON:-.venv/bin/python}
CLI=("$PY" -m cifar_resnet_cli)
WORK=$(mktemp -d)
LOGS=${GPU_CHECK_LOGS:-$WORK/logs}
mkdir -p "$LOGS"
trap 'rm -rf "$WORK"' EXIT
export PYTHONFAULTHANDLER=1
export CIFAR_RESNET_TRAIN__RUNS_DIR="$WORK/runs"

if [[ $DRY == 1 ]]; then
  DEV=cpu; SIZE=32; STEPS_DATA=700; VAL=100; BATCH=50; DTYPES=fp32,bf16; SLOW_VARIANTS=()
  BENCH_BATCHES=1,4; ITERS=3; EPOCHS=1; SLOW=(); EXPORT=(--method trace --method onnx)
else
  DEV=cuda; SIZE=224; STEPS_DATA=13800; VAL=1000; BATCH=64; DTYPES=fp32,bf16,fp16
  SLOW_VARIANTS=(compile aoti)
  BENCH_BATCHES=1,64; ITERS=10; EPOCHS=2; SLOW=(--image-size 160)  # Ctrl-C needs epochs of seconds
  EXPORT=(--method all)
fi
# Synthetic images: VAL held out for validation, the rest in batches of BATCH (200 steps per epoch on
# CUDA; a dry run limits the steps, except for the Ctrl-C check, which needs an epoch long enough to
# interrupt).
COMMON=(--device "$DEV" --dataset synthetic --synthetic-size "$STEPS_DATA" --val-size "$VAL" --init none
        --batch-size "$BATCH")
SHORT=()
[[ $DRY == 1 ]] && SHORT=(--limit-batches 4)

pass=0; fail=0; skipped=0
check() {  # check NAME COMMAND...: run it, one line with the verdict
  local name=$1; shift
  local log="$LOGS/${name// /_}.log" start=$SECONDS
  if "$@" >"$log" 2>&1; then
    echo "PASS  $name ($((SECONDS - start)) s)"; pass=$((pass + 1))
  else
    local code=$?
    echo "FAIL  $name (exit $code, $((SECONDS - start)) s): $(grep -v '^\s*$' "$log" | tail -1 | cut -c1-160)"
    fail=$((fail + 1))
  fi
}
skip() { echo "SKIP  $1: $2"; skipped=$((skipped + 1)); }
need_json() {  # need_json FILE PYTHON-EXPRESSION-ON-d: the JSON a command printed satisfies it
  "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if ($2) else 1)" "$1"
}

bench() {  # bench VARIANTS: every row timed and correct; the JSON kept beside the logs
  local json="$LOGS/bench-${1//,/-}.json"
  "${CLI[@]}" bench --device "$DEV" --image-size "$SIZE" --dtypes "$DTYPES" --variants "$1" \
    --batch-sizes "$BENCH_BATCHES" --warmup 3 --iters "$ITERS" --json >"$json" &&
  need_json "$json" "all(t['error'] is None and t['correct'] for t in d['timings'])"
}
train_amp() {  # train_amp AMP NAME
  "${CLI[@]}" train "${COMMON[@]}" "${SHORT[@]}" --epochs "$EPOCHS" --amp "$1" --channels-last --name "$2" --json >"$WORK/$2.json" &&
  need_json "$WORK/$2.json" "all(h['train_loss'] == h['train_loss'] for h in d['history']) and d['test_top1'] is not None"
}
ctrl_c_resume() {  # SIGINT during epoch 2 of 3, exit 130, then --resume finishes the run
  "${CLI[@]}" train "${COMMON[@]}" "${SLOW[@]}" --epochs 3 --name ctrlc --json >"$WORK/ctrlc1.json" 2>"$LOGS/ctrlc-train.err" &
  local pid=$! waited=0
  until [[ -s "$WORK/runs/ctrlc/metrics.jsonl" ]] || ! kill -0 "$pid" 2>/dev/null || ((waited > 3000)); do
    sleep 0.2; waited=$((waited + 1))
  done
  kill -INT "$pid" 2>/dev/null
  wait "$pid"; local code=$?
  [[ $code == 130 ]] || { echo "expected exit 130 after Ctrl-C, got $code"; return 1; }
  "${CLI[@]}" train --resume "$WORK/runs/ctrlc" --device "$DEV" --json >"$WORK/ctrlc2.json" &&
  need_json "$WORK/ctrlc2.json" "d['resumed_from_epoch'] is not None and len(d['history']) == 3"
}
torchrun_one() {
  "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m cifar_resnet_cli train "${COMMON[@]}" \
    "${SHORT[@]}" --epochs 1 --name torchrun --json >"$WORK/torchrun.json" &&
  need_json "$WORK/torchrun.json" "d['processes'] == 1"
}
export_predict() {
  local ckpt="$WORK/runs/bf16/best.safetensors" archive
  "${CLI[@]}" export "$ckpt" --device "$DEV" "${EXPORT[@]}" --out "$WORK/exports" --json >"$WORK/export.json" ||
    return 1
  "$PY" -c "import json, sys; [print(w) for w in json.load(open(sys.argv[1]))['warnings']]" \
    "$WORK/export.json" >"$WORK/export-warnings.txt"
  "$PY" -c "
import sys
from pathlib import Path
from PIL import Image
for i in range(3):
    Image.new('RGB', (40, 30), (60 * i, 90, 200 - 50 * i)).save(Path(sys.argv[1]) / f'img{i}.png')
" "$WORK" || return 1
  # The device's own package where there is one (aoti), else the first archive.
  archive=$("$PY" -c "
import json, sys
archives = json.load(open(sys.argv[1]))['archives']
print(next((a for a in archives if a['kind'] == 'aoti'), archives[0])['path'])" "$WORK/export.json") || return 1
  "${CLI[@]}" predict "$archive" "$WORK"/img*.png --device "$DEV" --json >"$WORK/predict.json" &&
  need_json "$WORK/predict.json" "len(d['predictions']) == 3"
}
eval_device() {
  "${CLI[@]}" eval "$WORK/runs/bf16/best.safetensors" --device "$DEV" --json >"$WORK/eval.json" &&
  need_json "$WORK/eval.json" "0.0 <= d['top1'] <= 1.0"
}

echo "gpu_check: device $DEV$([[ $DRY == 1 ]] && echo ' (dry run on the CPU)'), logs in $LOGS"
if [[ $DRY == 0 ]]; then
  check "cuda available" "$PY" -c "import torch; assert torch.cuda.is_available(); print(torch.cuda.get_device_name())"
fi
check "bench $DTYPES (eager,trace,script,frozen)" bench eager,trace,script,frozen
if [[ $DRY == 1 ]]; then skip "train --amp fp16" "fp16 trains on CUDA only"; else check "train --amp fp16 --channels-last" train_amp fp16 fp16; fi
check "train --amp bf16 --channels-last" train_amp bf16 bf16
check "Ctrl-C and resume" ctrl_c_resume
check "torchrun --nproc-per-node 1" torchrun_one
check "export ${EXPORT[*]} on $DEV, predict with the archive" export_predict
[[ -s "$WORK/export-warnings.txt" ]] && sed 's/^/NOTE  export: /' "$WORK/export-warnings.txt" | cut -c1-200
check "eval on $DEV" eval_device
if [[ $DRY == 1 ]]; then
  skip "pytest -m gpu" "needs CUDA (and a dry run is itself run by the suite)"
else
  check "pytest -m gpu" "$PY" -m pytest -q -m gpu -p no:cacheprovider
fi
for v in "${SLOW_VARIANTS[@]}"; do
  check "bench $DTYPES (eager,$v)" bench "eager,$v"
done
echo "gpu_check: $pass passed, $fail failed, $skipped skipped"
[[ $fail == 0 ]]
