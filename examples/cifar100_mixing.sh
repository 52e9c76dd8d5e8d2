#!/usr/bin/env bash
# CIFAR-100 without mixing, with MixUp, with CutMix: the same run three times, then compared.
DATASET=${DATASET:-cifar100}
source "$(dirname "$0")/lib.sh"

port_weights "$OUT/init.safetensors"
runs=()
for mix in "none" "--mixup 0.2" "--cutmix 1.0"; do
  name=${mix#--}; name=${name// /-}
  read -r -a flags <<<"$([[ $mix == none ]] && echo "" || echo "$mix")"
  runs+=("$("$CR" train "${DATA[@]}" --init "$OUT/init.safetensors" --epochs "$EPOCHS" "${flags[@]}" \
          --runs-dir "$OUT/runs" --name "$name" "${EXTRA[@]}" --json | json_get run_dir)")
done
"$CR" compare "${runs[@]}" --sort test_top1 --plot "$OUT/mixing.png"
