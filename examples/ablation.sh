#!/usr/bin/env bash
# Train, then remove each residual block (and stage) in turn and see what top-1 loses.
DATASET=${DATASET:-cifar10}
source "$(dirname "$0")/lib.sh"

port_weights "$OUT/init.safetensors"
run=$("$CR" train "${DATA[@]}" --init "$OUT/init.safetensors" --epochs "$EPOCHS" --runs-dir "$OUT/runs" \
      --name ablation "${EXTRA[@]}" --json | json_get run_dir)
"$CR" ablate "$run/best.safetensors" "${DATA[@]}" --split val --limit "${ABLATE_LIMIT:-2000}" --plot "$OUT/ablation.png"
most=$("$CR" ablate "$run/best.safetensors" "${DATA[@]}" --split val --limit "${ABLATE_LIMIT:-2000}" --json \
       | json_get rows.0.name)
echo "removing $most costs the most"
