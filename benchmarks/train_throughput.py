"""Training throughput: the conventional torchvision pipeline against `cifar-resnet train`.

(a) conventional: ``torchvision.datasets.CIFAR10`` + transforms (RandomCrop(32, padding=4),
    RandomHorizontalFlip, ToTensor, Normalize, and Resize for transfer) + ``DataLoader``, fp32 eager
    training steps, as in the PyTorch CIFAR tutorials;
(b) ``cifar_resnet_cli.train.train`` with its fastest settings: device-resident uint8 data,
    batched augmentation on the device, bf16 autocast and channels-last.

Same model (our ResNet34, random init), same batch size, same optimiser (SGD, momentum 0.9), same
augmentation, same number of steps, one process, this machine. The first ``--warmup`` steps of each
are not timed. Prints a table and, with --json, the figures.

    .venv/bin/python benchmarks/train_throughput.py --data-dir ../shared/data/cifar10-mini
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader
from torchvision import transforms

from cifar_resnet_cli.data import CIFAR_STATS
from cifar_resnet_cli.model import resnet34
from cifar_resnet_cli.settings import load_settings
from cifar_resnet_cli.train import NullProgress, train

CONFIGS = {
    "cifar-stem-32px": ("cifar", 32),
    "imagenet-stem-128px": ("imagenet", 128),
    "imagenet-stem-32px": ("imagenet", 32),
}


class _Cifar10(torchvision.datasets.CIFAR10):
    """torchvision's reader, with the md5 check replaced by an existence check.

    The development copy of CIFAR-10 (shared/data/cifar10-mini) is not byte-identical to the
    official files, so torchvision's md5 check would refuse it; the reading code is unchanged.
    """

    def _check_integrity(self) -> bool:
        root = Path(self.root) / self.base_folder
        return all((root / name).is_file() for name, _ in self.train_list + self.test_list)


def _training_set(data_dir: Path, size: int) -> _Cifar10:
    """The tutorials' pipeline: per-image PIL crop with 4 px padding, flip, (resize), to tensor, normalise."""
    mean, std = CIFAR_STATS["cifar10"]
    ops = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    if size != 32:
        ops.append(transforms.Resize(size, antialias=True))
    ops += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return _Cifar10(str(data_dir), train=True, transform=transforms.Compose(ops), download=False)


def conventional(data_dir: Path, stem: str, size: int, *, batch: int, steps: int, warmup: int, workers: int,
                 device: torch.device) -> float:  # fmt: skip
    loader = DataLoader(_training_set(data_dir, size), batch_size=batch, shuffle=True, num_workers=workers,
                        drop_last=True,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)  # fmt: skip
    torch.manual_seed(0)
    model = resnet34(num_classes=10, stem=stem).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    seen, start, done = 0, 0.0, 0
    while done < steps + warmup:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            elif done > warmup:
                seen += len(y)
            if done == steps + warmup:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


@torch.inference_mode()
def _test_top1(model: torch.nn.Module, data_dir: Path, size: int, device: torch.device) -> float:
    mean, std = CIFAR_STATS["cifar10"]
    ops = ([transforms.Resize(size, antialias=True)] if size != 32 else []) + [
        transforms.ToTensor(), transforms.Normalize(mean, std)]  # fmt: skip
    test = _Cifar10(str(data_dir), train=False, transform=transforms.Compose(ops), download=False)
    model.eval()
    correct = 0
    for x, y in DataLoader(test, batch_size=500):
        correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
    return correct / len(test)


def conventional_accuracy(data_dir: Path, stem: str, size: int, *, epochs: int, batch: int, lr: float,
                          workers: int, device: torch.device) -> float:  # fmt: skip
    """Train E full epochs the conventional way (fp32, cosine per iteration); test top-1."""
    loader = DataLoader(_training_set(data_dir, size), batch_size=batch, shuffle=True, num_workers=workers)
    torch.manual_seed(0)
    model = resnet34(num_classes=10, stem=stem).to(device)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=lr, momentum=0.9, nesterov=True)  # fmt: skip
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(loader))
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return _test_top1(model, data_dir, size, device)


def ours_accuracy(data_dir: Path, stem: str, size: int, *, epochs: int, batch: int, lr: float,
                  device: torch.device, amp: str, channels_last: bool, runs: Path) -> float:  # fmt: skip
    settings = load_settings(None, {
        "device": device.type,
        "data": {"dataset": "cifar10", "data_dir": str(data_dir), "download": False, "val_size": 0},
        "model": {"stem": stem, "image_size": size},
        "train": {"init": "none", "epochs": epochs, "batch_size": batch, "lr": lr, "amp": amp,
                  "channels_last": channels_last, "runs_dir": str(runs), "schedule": "cosine"},
    })  # fmt: skip
    return train(settings).test_top1


class _Clock(NullProgress):
    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device, self.times = warmup, device, []

    def step(self, *, step: int, **_) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def ours(data_dir: Path, stem: str, size: int, *, batch: int, steps: int, warmup: int, device: torch.device,
         amp: str, channels_last: bool, runs: Path) -> float:  # fmt: skip
    settings = load_settings(None, {
        "device": device.type,
        "data": {"dataset": "cifar10", "data_dir": str(data_dir), "download": False, "val_size": 1000},
        "model": {"stem": stem, "image_size": size},
        "train": {"init": "none", "epochs": 1, "batch_size": batch, "lr": 0.05, "limit_batches": steps + warmup,
                  "amp": amp, "channels_last": channels_last, "runs_dir": str(runs), "schedule": "constant"},
        "eval": {"batch_size": 1000},
    })  # fmt: skip
    clock = _Clock(warmup, device)
    train(settings, clock)
    t = clock.times
    return batch * (len(t) - warmup) / (t[-1] - t[warmup - 1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, required=True, help="folder holding cifar-10-batches-py/")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {', '.join(CONFIGS)}")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=12, help="timed steps per pipeline")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the conventional pipeline")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="bf16", choices=["off", "bf16", "fp16"])
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument(
        "--accuracy-epochs",
        type=int,
        default=0,
        help="also train both pipelines this many full epochs and compare test top-1",
    )
    p.add_argument("--accuracy-config", default="imagenet-stem-32px", choices=list(CONFIGS))
    p.add_argument("--accuracy-batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in filter(None, args.configs.split(",")):
            stem, size = CONFIGS[name]
            a = conventional(args.data_dir, stem, size, batch=args.batch_size, steps=args.steps, warmup=args.warmup,
                             workers=args.workers, device=device)  # fmt: skip
            b = ours(args.data_dir, stem, size, batch=args.batch_size, steps=args.steps, warmup=args.warmup,
                     device=device, amp=args.amp, channels_last=not args.no_channels_last, runs=Path(tmp))  # fmt: skip
            rows.append({"config": name, "conventional_ips": a, "ours_ips": b, "ratio": b / a})
            print(f"{name}: conventional {a:.1f} img/s, cifar-resnet {b:.1f} img/s, {b / a:.2f}x", file=sys.stderr)
    accuracy = None
    if args.accuracy_epochs:
        stem, size = CONFIGS[args.accuracy_config]
        with tempfile.TemporaryDirectory() as tmp:
            a = conventional_accuracy(args.data_dir, stem, size, epochs=args.accuracy_epochs,
                                      batch=args.accuracy_batch_size, lr=args.lr, workers=args.workers,
                                      device=device)  # fmt: skip
            b = ours_accuracy(args.data_dir, stem, size, epochs=args.accuracy_epochs, batch=args.accuracy_batch_size,
                              lr=args.lr, device=device, amp=args.amp, channels_last=not args.no_channels_last,
                              runs=Path(tmp))  # fmt: skip
        accuracy = {"config": args.accuracy_config, "epochs": args.accuracy_epochs, "conventional_test_top1": a,
                    "ours_test_top1": b}  # fmt: skip
        print(f"accuracy after {args.accuracy_epochs} epochs: conventional {a:.4f}, cifar-resnet {b:.4f}",
              file=sys.stderr)  # fmt: skip
    env = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "batch_size": args.batch_size, "steps": args.steps,
           "amp": args.amp, "channels_last": not args.no_channels_last, "workers": args.workers}  # fmt: skip
    if args.json:
        print(json.dumps({"environment": env, "results": rows, "accuracy": accuracy}, indent=2))
    else:
        print(f"environment: {env}")
        print(f"{'config':<22} {'conventional img/s':>18} {'cifar-resnet img/s':>18} {'speed-up':>9}")
        for r in rows:
            print(f"{r['config']:<22} {r['conventional_ips']:>18.1f} {r['ours_ips']:>18.1f} {r['ratio']:>8.2f}x")
        if accuracy:
            print(
                f"test top-1 after {accuracy['epochs']} epochs ({accuracy['config']}): conventional "
                f"{accuracy['conventional_test_top1']:.4f}, cifar-resnet {accuracy['ours_test_top1']:.4f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
