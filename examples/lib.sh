# Shared by the example scripts: settings from the environment and two small helpers.
#   DATASET     cifar10 | cifar100 | synthetic              (default: each script's own)
#   EPOCHS      epochs per training run                       (default: 10)
#   DATA_DIR    folder with the CIFAR files                    (default: ~/.cache/cifar-resnet/data)
#   WEIGHTS     IMAGENET1K_V1 (download), none, or a torchvision .pth file   (default: IMAGENET1K_V1)
#   OUT         where runs, weights, archives and plots go     (default: examples-out/<script>)
#   EXTRA_ARGS  more train flags, e.g. "--limit-batches 20 --amp bf16 --channels-last"
#   BENCH_VARIANTS, BENCH_ITERS, ABLATE_LIMIT   the size of the bench and ablate steps
#   OPTIMIZERS, SCHEDULES   the grid of schedule_study.sh (default: "sgd adamw", "cosine onecycle step")
set -euo pipefail
CR=${CR:-cifar-resnet}
EPOCHS=${EPOCHS:-10}
WEIGHTS=${WEIGHTS:-IMAGENET1K_V1}
OUT=${OUT:-examples-out/$(basename "$0" .sh)}
read -r -a EXTRA <<<"${EXTRA_ARGS:-}"
DATA=(--dataset "$DATASET")
[[ -n "${DATA_DIR:-}" ]] && DATA+=(--data-dir "$DATA_DIR")
mkdir -p "$OUT"

# json_get FIELD: read one field of the JSON on stdin (what `jq -r .FIELD` does).
json_get() {
  python3 -c 'import json,sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v[int(k)] if isinstance(v, list) else v[k]
print(v)' "$1"
}

# port_weights OUT.safetensors [port flags]: ImageNet weights (or a .pth, or none) for $DATASET.
port_weights() {
  local out=$1; shift
  if [[ -f "$WEIGHTS" ]]; then src=(--from "$WEIGHTS"); else src=(--weights "$WEIGHTS"); fi
  "$CR" port "${src[@]}" --dataset "$DATASET" --out "$out" --force "$@" --json | json_get output_sha256 >/dev/null
}
