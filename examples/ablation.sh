#!/usr/bin/env bash
# Train, then remove each residual block (and stage) in turn and see what top-1 loses.
DATASET=${DATASET:-cifar10}
source "$(dirname "$0")/lib.sh"

port_weights "$OUT/init.safetensors"
run=$("$CR" train "${DATA[@]}" --init "$OUT/init.safetensors" --epochs "$EPOCHS" --runs-dir "$OUT/runs" \
      --name ablation "${EXTRA[@]}" --json | json_get run_dir)
"$CR" ablate "$run/best.safetensors" "${DATA[@]}" --split val --limit "${ABLATE_LIMIT:-2000}" \
    --plot "$OUT/ablation.png" --json >"$OUT/ablation.json"
echo "intact top-1 $(json_get intact_top1 <"$OUT/ablation.json"); removing $(json_get rows.0.name <"$OUT/ablation.json")" \
     "costs the most ($(json_get rows.0.drop <"$OUT/ablation.json") of top-1); plot: $OUT/ablation.png"
