#!/usr/bin/env bash
# The offline demo behind `make demo`: inspect the model, then port weights, chaining with --json.
# Nothing here needs the network: the ported checkpoint is a random-initialised torchvision
# ResNet34 saved as a real .pth file, exactly the file type torchvision's download gives.
set -euo pipefail
OUT=${OUT:-demo-out}
mkdir -p "$OUT"

echo "== 1. Our ResNet34 against torchvision's (imagenet stem, 224 px) ==" >&2
cifar-resnet inspect --image-size 224 --depth 1

echo "== 2. The cifar stem: which tensors differ, and parity after the same stem surgery ==" >&2
diff=$(cifar-resnet inspect --stem cifar --json | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["max_abs_diff"], r["tensors_differing"])')
echo "cifar stem: max |diff| and differing tensors: $diff"

echo "== 3. A torchvision ResNet34 checkpoint (.pth), random-initialised since we are offline ==" >&2
python3 - "$OUT/resnet34-random.pth" <<'PY'
import sys, torch, torchvision
torch.manual_seed(0)
torch.save(torchvision.models.resnet34(weights=None).state_dict(), sys.argv[1])
PY

echo "== 4. Port it for CIFAR-10 with the cifar stem (conv1 adapted from 7x7 to 3x3) ==" >&2
cifar-resnet port --from "$OUT/resnet34-random.pth" --stem cifar --dataset cifar10 \
    --out "$OUT/resnet34-cifar10.safetensors" --force

echo "== 5. --weights none: random weights for a synthetic run, said loudly ==" >&2
sha=$(cifar-resnet port --weights none --dataset synthetic --stem cifar \
    --out "$OUT/random-synthetic.safetensors" --force --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["output_sha256"])')
echo "random-synthetic.safetensors sha256 $sha"

echo "== 6. The real download (fails offline with a clear message; the demo goes on) ==" >&2
cifar-resnet port --weights IMAGENET1K_V1 --out "$OUT/imagenet.safetensors" --force \
    || echo "(expected offline: use --from FILE.pth as in step 4)" >&2
