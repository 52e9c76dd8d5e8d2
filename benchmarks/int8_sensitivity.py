"""Where an int8 archive's error comes from, measured on a checkpoint's own validation images.

    python benchmarks/int8_sensitivity.py runs/NAME/best.safetensors [--data-dir cifar10-mini]

Calibrates exactly as ``export --dtype int8`` does (the same training images, the same ONNX Runtime
QDQ settings, the data settings from the checkpoint, its run folder and CIFAR_RESNET_* variables as
``export`` reads them) and compares with the fp32 checkpoint on the validation split:

- ``margins``: the share of images whose two best fp32 logits are within 0.05 / 0.1 of each other
  (any perturbation of that size can flip them, so they bound the agreement any int8 model can reach);
- ``weights_only``: weights rounded to int8 exactly as the archive stores them (symmetric, one scale per
  output channel; to nearest or by GPTQ as ``--weight-rounding`` says, nearest by default as in ``export``),
  activations left in float; simulated in PyTorch. With GPTQ, ``weights_only_nearest`` beside it;
- ``int8``: the whole model quantized (the file ``export`` would write);
- ``only_<stage>``: only that stage quantized (stem, layer1..4, fc; ``--stages``), the rest of the graph in float.

Each entry gives the top-1 agreement with fp32, the flipped images, the accuracy drop in points, and
``diff_error_std``: the standard deviation of the error in (logit of fp32's top-1 - logit of its
runner-up), the quantity whose sign decides a flip. Prints one JSON object with the machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn

from cifar_resnet_cli.core.devices import cpu_matrix_flags, cpu_name
from cifar_resnet_cli.core.settings import load_settings
from cifar_resnet_cli.deploy.int8 import int8_data
from cifar_resnet_cli.deploy.job import Deployed
from cifar_resnet_cli.deploy.rounding import round_weights
from cifar_resnet_cli.deploy.writers import onnx_proto, quantize_onnx, save_onnx
from cifar_resnet_cli.model.archives import optional
from cifar_resnet_cli.model.weights import load_model

STAGES = ("layer1", "layer2", "layer3", "layer4", "fc")  # anything else is the stem


def logits(fn, images: Tensor) -> Tensor:
    with torch.inference_mode():
        return torch.cat([torch.as_tensor(fn(images[i : i + 250])).float() for i in range(0, len(images), 250)])


def summary(out: Tensor, ref: Tensor, labels: Tensor) -> dict:
    top2 = ref.topk(2, 1).indices
    rows = torch.arange(len(ref))
    diff_error = (out[rows, top2[:, 0]] - out[rows, top2[:, 1]]) - (ref[rows, top2[:, 0]] - ref[rows, top2[:, 1]])
    n = len(labels)
    drop = int((ref.argmax(1) == labels).sum()) - int((out.argmax(1) == labels).sum())
    return {
        "agreement": float((out.argmax(1) == ref.argmax(1)).float().mean()),
        "flips": int((out.argmax(1) != ref.argmax(1)).sum()),
        "drop_points": 100 * drop / n,
        "diff_error_std": round(float(diff_error.std()), 4),
    }


def module_stage(name: str) -> str:
    return next((s for s in STAGES if name == s or name.startswith(f"{s}.")), "stem")


def partly_rounded(model: nn.Module, rounded: nn.Module, stage: str) -> nn.Module:
    """``model`` with the weights of ``stage``'s convolution/linear layers taken from ``rounded``."""
    model = copy.deepcopy(model)
    source = dict(rounded.named_modules())
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear) and module_stage(name) == stage:
            module.weight.data = source[name].weight.data.clone()
    return model


def stage_nodes(proto) -> dict[str, list[str]]:
    """ONNX node names by ResNet stage, from the exporter's name scopes, after the same pre-processing
    ``quantize_onnx`` applies (so the names are the ones it quantizes)."""
    onnx = optional("onnx", "this benchmark")
    shape_inference = optional("onnxruntime.quantization.shape_inference", "this benchmark")
    with tempfile.TemporaryDirectory() as tmp:
        raw, prepared = Path(tmp) / "raw.onnx", Path(tmp) / "prepared.onnx"
        save_onnx(proto, raw)
        shape_inference.quant_pre_process(str(raw), str(prepared))
        nodes = onnx.load(str(prepared)).graph.node
    stages: dict[str, list[str]] = {}
    for node in nodes:
        scopes = {p.key: p.value for p in node.metadata_props}.get("pkg.torch.onnx.name_scopes", "")
        stage = next((s for s in STAGES if f"model.{s}" in scopes), "stem")
        stages.setdefault(stage, []).append(node.name)
    if set(stages) != {"stem", *STAGES}:
        raise SystemExit(
            f"could not place the ONNX nodes in stages (found {sorted(stages)}): the exporter's "
            "name scopes are missing from this torch version"
        )
    return stages


def quantized_logits(proto, calibration: list[Tensor], images: Tensor, exclude: list[str], tmp: Path) -> Tensor:
    ort = optional("onnxruntime", "this benchmark")
    path = tmp / "int8.onnx"
    quantize_onnx(proto, path, calibration, exclude=exclude)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # as eval and export run it
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return logits(lambda x: session.run(None, {"input": x.numpy()})[0], images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data-dir", type=Path, help="the data folder, when the checkpoint is not in its run folder")
    parser.add_argument("--calibration-images", type=int, default=1024)
    parser.add_argument("--weight-rounding", choices=["nearest", "gptq"], default="nearest")
    parser.add_argument(
        "--stages",
        default=",".join(("stem", *STAGES)),
        help="the stages quantized alone, comma-separated (each costs one export and calibration)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.stages.split(",")) - {"stem", *STAGES}
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}: choose from stem, {', '.join(STAGES)}")
    data = {"data_dir": args.data_dir, "download": False} if args.data_dir else {}
    export = {"calibration_images": args.calibration_images, "weight_rounding": args.weight_rounding}
    settings = load_settings(None, {"data": data, "export": export})
    model, meta = load_model(args.checkpoint)
    model.eval()
    calibration, held_out = int8_data(settings, meta, args.checkpoint, None)
    images, labels = torch.cat(list(held_out.batches())), held_out.labels
    ref = logits(model, images)
    top2 = ref.topk(2, 1).values
    margin = top2[:, 0] - top2[:, 1]
    result = {
        "checkpoint": str(args.checkpoint),
        "image_size": meta.image_size,
        "images": len(labels),
        "calibration_images": sum(len(b) for b in calibration),
        "margins": {f"below_{t}": float((margin < t).float().mean()) for t in (0.05, 0.1)},
    }
    rounded, rounding = round_weights(model, args.weight_rounding, calibration)
    result["weight_rounding"] = asdict(rounding)
    result["weights_only"] = summary(logits(rounded, images), ref, labels)
    if args.weight_rounding != "nearest":
        result["weights_only_nearest"] = summary(logits(round_weights(model, "nearest", [])[0], images), ref, labels)
    with tempfile.TemporaryDirectory(prefix="int8-sensitivity-") as tmp:
        # As export writes it: nearest-rounded weights are left to the quantizer, which rounds them alike.
        whole = model if args.weight_rounding == "nearest" else rounded
        proto = onnx_proto(Deployed(whole).eval(), images[:2], "{}")
        result["int8"] = summary(quantized_logits(proto, calibration, images, [], Path(tmp)), ref, labels)
        for stage in args.stages.split(","):
            # Only this stage's weights rounded (the rest stay float weights in float layers).
            proto = onnx_proto(Deployed(partly_rounded(model, rounded, stage)).eval(), images[:2], "{}")
            stages = stage_nodes(proto)
            exclude = [name for other, names in stages.items() if other != stage for name in names]
            out = quantized_logits(proto, calibration, images, exclude, Path(tmp))
            result[f"only_{stage}"] = summary(out, ref, labels)
    print(
        json.dumps(
            {
                **result,
                "cpu": cpu_name(),
                "cpu_flags": cpu_matrix_flags(),
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
