#!/usr/bin/env bash
# The whole path once: inspect, port, train, eval, export, bench.
DATASET=${DATASET:-cifar10}
source "$(dirname "$0")/lib.sh"

diff=$("$CR" inspect --depth 1 --json | json_get max_abs_diff)
echo "our ResNet34 vs torchvision: max |diff| $diff"

port_weights "$OUT/init.safetensors"
run=$("$CR" train "${DATA[@]}" --init "$OUT/init.safetensors" --epochs "$EPOCHS" --runs-dir "$OUT/runs" \
      --name quickstart "${EXTRA[@]}" --json | json_get run_dir)
top1=$("$CR" eval "$run/best.safetensors" "${DATA[@]}" --json | json_get top1)
echo "test top-1 of $run/best.safetensors: $top1"

archive=$("$CR" export "$run/best.safetensors" --method trace --out "$OUT" --force --json | json_get archives.0.path)
echo "exported $archive"
"$CR" bench "$run/best.safetensors" --variants "${BENCH_VARIANTS:-eager,trace,script,frozen}" --batch-sizes 1 --iters "${BENCH_ITERS:-20}" \
    --json | json_get fastest_correct.1.variant
