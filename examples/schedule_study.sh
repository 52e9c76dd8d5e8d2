#!/usr/bin/env bash
# Cosine, one-cycle and step learning-rate schedules, each with SGD and AdamW; then compared.
DATASET=${DATASET:-cifar10}
source "$(dirname "$0")/lib.sh"

port_weights "$OUT/init.safetensors"
runs=()
read -r -a OPTIMIZERS <<<"${OPTIMIZERS:-sgd adamw}"
read -r -a SCHEDULES <<<"${SCHEDULES:-cosine onecycle step}"
for optimizer in "${OPTIMIZERS[@]}"; do
  lr=$([[ $optimizer == sgd ]] && echo 0.05 || echo 0.001)
  for schedule in "${SCHEDULES[@]}"; do
    runs+=("$("$CR" train "${DATA[@]}" --init "$OUT/init.safetensors" --epochs "$EPOCHS" --optimizer "$optimizer" \
            --lr "$lr" --schedule "$schedule" --runs-dir "$OUT/runs" --name "$optimizer-$schedule" "${EXTRA[@]}" \
            --json | json_get run_dir)")
  done
done
"$CR" compare "${runs[@]}" --plot "$OUT/schedules.png"
