"""What each layer kept in float costs an int8 file in speed: the numbers behind ``--max-float-layers``.

    python benchmarks/int8_float_layers.py runs/NAME/best.safetensors [--data-dir DIR] [--runtime openvino]

Ranks the layers as ``export`` does when the all-int8 file misses its budget (each quantized alone on a
third of the validation images), then writes the file with the first k ranked layers in float for each
``--k`` and times it against the fp32 ONNX file and the all-int8 one in the same runtime (median of
interleaved calls, the batch ``export`` times: 64 images at 32 px). Prints one JSON object with the machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from cifar_resnet_cli.core.devices import cpu_matrix_flags, cpu_name
from cifar_resnet_cli.core.settings import load_settings
from cifar_resnet_cli.deploy.int8 import int8_data
from cifar_resnet_cli.deploy.int8_fallback import layer_names, median_ms, rank_layers, split, timing_batch
from cifar_resnet_cli.deploy.job import Deployed
from cifar_resnet_cli.deploy.writers import Int8Writer, onnx_proto
from cifar_resnet_cli.model.archives import onnx_runner
from cifar_resnet_cli.model.weights import load_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data-dir", type=Path, help="the data folder, when the checkpoint is not in its run folder")
    parser.add_argument("--calibration-images", type=int, default=1024)
    parser.add_argument("--runtime", choices=["onnxruntime", "openvino"], default="onnxruntime")
    parser.add_argument("--k", default="0,1,2,4,8,12,16,24", help="numbers of float layers to time")
    args = parser.parse_args(argv)
    data = {"data_dir": args.data_dir, "download": False} if args.data_dir else {}
    settings = load_settings(None, {"data": data, "export": {"calibration_images": args.calibration_images}})
    model, meta = load_model(args.checkpoint)
    model.eval()
    calibration, held_out = int8_data(settings, meta, args.checkpoint, None)
    images = torch.cat(list(held_out.batches()))
    with torch.inference_mode():
        reference = model(images).float()
    ranking, _ = split(len(images))
    x = images[: timing_batch(meta.image_size)]
    with (
        tempfile.TemporaryDirectory() as tmp,
        Int8Writer(onnx_proto(Deployed(model).eval(), x[:2], "{}"), calibration) as writer,
    ):
        names = layer_names(model, writer.weight_nodes())

        def logits_of(path: Path, index: torch.Tensor) -> torch.Tensor:
            return onnx_runner(path, args.runtime)(images[index])

        ranked = rank_layers(writer, Path(tmp) / "scratch.onnx", logits_of, reference, ranking, list(names))
        runners = {"fp32": onnx_runner(writer.fp32, args.runtime)}
        for k in (int(v) for v in args.k.split(",")):
            path = Path(tmp) / f"k{k}.onnx"
            writer.write(path, exclude=ranked[:k])
            runners[f"float_{k}"] = onnx_runner(path, args.runtime)
        ms = median_ms(runners, x)
    result = {
        "checkpoint": str(args.checkpoint),
        "cpu": cpu_name(),
        "cpu_flags": cpu_matrix_flags(),
        "threads": torch.get_num_threads(),
        "runtime": args.runtime,
        "batch": len(x),
        "ranked": [names[n] for n in ranked],
        "ms": ms,
        "speedup_over_fp32": {k: ms["fp32"] / v for k, v in ms.items() if k != "fp32"},
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
