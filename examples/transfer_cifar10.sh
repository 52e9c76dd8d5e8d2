#!/usr/bin/env bash
# Transfer learning in two stages: feature extraction, then fine-tuning from it; eval, export, bench.
DATASET=${DATASET:-cifar10}
source "$(dirname "$0")/lib.sh"

port_weights "$OUT/imagenet.safetensors"
frozen=$("$CR" train "${DATA[@]}" --init "$OUT/imagenet.safetensors" --freeze-backbone --no-augment \
         --epochs "$EPOCHS" --lr 0.01 --runs-dir "$OUT/runs" --name frozen "${EXTRA[@]}" --json | json_get run_dir)
echo "feature extraction: best validation top-1 $(json_get best_val_top1 <"$frozen/summary.json")"

tuned=$("$CR" train "${DATA[@]}" --init "$frozen/best.safetensors" --backbone-lr-scale 0.1 --lr 0.01 \
        --epochs "$EPOCHS" --runs-dir "$OUT/runs" --name finetune "${EXTRA[@]}" --json | json_get run_dir)
echo "fine-tuning: test top-1 $("$CR" eval "$tuned/best.safetensors" "${DATA[@]}" --json | json_get top1)"

"$CR" export "$tuned/best.safetensors" --method frozen --out "$OUT" --force --json | json_get archives.0.path
"$CR" compare "$frozen" "$tuned"
"$CR" bench "$tuned/best.safetensors" --variants "${BENCH_VARIANTS:-eager,trace,script,frozen}" --batch-sizes 1 \
    --iters "${BENCH_ITERS:-20}" --json | json_get fastest_correct.1.variant
