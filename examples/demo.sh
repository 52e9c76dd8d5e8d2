#!/usr/bin/env bash
# The offline demo behind `make demo`: inspect, port, train, eval, export, bench, predict, chained with --json.
# Nothing here needs the network: the ported checkpoint is a random-initialised torchvision
# ResNet34 saved as a real .pth file, exactly the file type torchvision's download gives, and the
# data are the built-in synthetic set, written in the CIFAR layout (it says so wherever it is used).
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
sha=$(cifar-resnet port --weights none --dataset synthetic \
    --out "$OUT/random-synthetic.safetensors" --force --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["output_sha256"])')
echo "random-synthetic.safetensors sha256 $sha"

SYNTH=(--dataset synthetic --data-dir "$OUT/data" --synthetic-size 3000 --val-size 500 --runs-dir "$OUT/runs")
echo "== 6. Feature extraction: frozen backbone, features computed once, head trained on them ==" >&2
cifar-resnet train "${SYNTH[@]}" --init "$OUT/random-synthetic.safetensors" --freeze-backbone --no-augment \
    --epochs 5 --lr 0.01 --name frozen

echo "== 7. Training every layer from scratch (--amp auto says which precision and why), then eval of the best checkpoint ==" >&2
run=$(cifar-resnet train "${SYNTH[@]}" --init none --epochs 2 --batch-size 64 \
    --name scratch --json | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["precision"], file=sys.stderr); print(r["run_dir"])')
cifar-resnet eval "$run/best.safetensors" --data-dir "$OUT/data" --confusion "$run/confusion.csv"

echo "== 8. Export every kind (TorchScript, AOTInductor .pt2, ONNX) and int8 ONNX, each verified; eval archives ==" >&2
mkdir -p "$OUT/exports"
cifar-resnet export "$run/best.safetensors" --method all --out "$OUT/exports" --force
cifar-resnet export "$run/best.safetensors" --method onnx --dtype int8 --onnx-runtime openvino --out "$OUT/exports" --force
# Archives record the run's data folder: no --data-dir needed outside the run folder.
cifar-resnet eval "$OUT/exports/best.trace.pt" --json \
    | python3 -c 'import json,sys; r=json.load(sys.stdin); print("traced archive: test top-1 %.4f" % r["top1"])'
cifar-resnet eval "$OUT/exports/best.int8.onnx" --onnx-runtime openvino --json \
    | python3 -c 'import json,sys; r=json.load(sys.stdin); print("int8 ONNX in OpenVINO: test top-1 %.4f" % r["top1"])'

echo "== 9. Benchmark eager, TorchScript and the ONNX runtimes side by side (short run) ==" >&2
cifar-resnet bench "$run/best.safetensors" --variants eager,trace,script,frozen,onnxruntime,openvino \
    --dtypes fp32,bf16,int8 --layouts nchw,nhwc --batch-sizes 64 --warmup 3 --iters 10

echo "== 10. predict: a few synthetic test images written out as PNG files, classified by the archive ==" >&2
python3 - "$OUT/data" "$OUT/images" <<'PY'
import pathlib, pickle, sys
import numpy as np
from PIL import Image
data_dir, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
batch = pickle.loads(next(data_dir.glob("synthetic-10c-*/test_batch")).read_bytes(), encoding="latin1")
names = pickle.loads(next(data_dir.glob("synthetic-10c-*/batches.meta")).read_bytes(), encoding="latin1")["label_names"]
for i in range(6):
    image = batch["data"][i].reshape(3, 32, 32).transpose(1, 2, 0)
    Image.fromarray(np.ascontiguousarray(image)).resize((96, 96)).save(out / f"{i}-{names[batch['labels'][i]]}.png")
PY
cifar-resnet predict "$OUT/exports/best.trace.pt" "$OUT/images" --top-k 2

echo "== 11. The real download (fails offline with a clear message; the demo goes on) ==" >&2
cifar-resnet port --weights IMAGENET1K_V1 --out "$OUT/imagenet.safetensors" --force \
    || echo "(expected offline: use --from FILE.pth as in step 4, or --init none / --init FILE for train)" >&2
