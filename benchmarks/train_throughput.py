"""Training throughput: the conventional torchvision pipeline against `cifar-resnet train`, in
interleaved rounds, with each configuration's share of the machine's measured limit.

Pipelines (same data, same model, same batch, same optimiser: SGD, momentum 0.9, Nesterov):

  conventional   ``torchvision.datasets.CIFAR10`` + transforms (RandomCrop(32, padding=4),
                 RandomHorizontalFlip, ToTensor, Normalize, and Resize for transfer) + ``DataLoader``
                 with worker processes, fp32 eager steps: the PyTorch CIFAR tutorials.
  ours           ``cifar_resnet_cli.training.train.train`` as a user runs it (its defaults: device-resident
                 uint8 data, batched augmentation on the device, ``--amp auto``, fused optimiser).
  ours-*         ours with one thing changed, to measure what that thing is worth (``--variants``).

Method: rounds (``cifar_resnet_cli.measure.timing``): each round times every pipeline once, order reversed
every other round; each pipeline first runs ``--warmup`` untimed steps, then ``--steps`` timed ones.
The ratio of each round over the baseline is taken; rounds go on until the interquartile range of
the ratios is within ``--tolerance`` of their median (at least ``--min-rounds``), or
``--max-rounds``, when the result says "not stable". Reported: the median ratio, its IQR and
min-max, the median images/s, and the share of the machine's limit: FLOPs per training image
(forward + backward, counted by ``torch.utils.flop_counter``) x images/s over the rate of a
4096 x 4096 matmul in fp32 and bf16 measured at the start.

    .venv/bin/python benchmarks/train_throughput.py --data-dir ../shared/data/cifar10-mini
    .venv/bin/python benchmarks/train_throughput.py --data-dir DIR --configs cifar-stem-32px \\
        --variants ours-unfused,ours-compile,ours-no-augment --profile 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader
from torchvision import transforms

import cifar_resnet_cli.training.train as training
from cifar_resnet_cli.core.devices import cpu_matrix_flags, cpu_name, resolve_precision
from cifar_resnet_cli.core.kinds import CIFAR_STATS
from cifar_resnet_cli.core.settings import load_settings
from cifar_resnet_cli.measure.machine import matmul_rate, model_flops
from cifar_resnet_cli.measure.timing import Measure, Rounds, interleave
from cifar_resnet_cli.model.resnet import resnet34
from cifar_resnet_cli.training import plan, setup

CONFIGS = {
    "cifar-stem-32px": ("cifar", 32),
    "imagenet-stem-128px": ("imagenet", 128),
    "imagenet-stem-32px": ("imagenet", 32),
}


@contextmanager
def _unfused() -> Iterator[None]:
    """The optimiser's per-tensor loop (torch's default on the CPU) instead of the fused kernel."""
    saved = setup.fused_supported
    setup.fused_supported = lambda model: False
    try:
        yield
    finally:
        setup.fused_supported = saved


# name -> (settings overrides on top of ours, a context to run it in, what it measures)
VARIANTS: dict[str, tuple[dict[str, dict[str, Any]], Callable[[], Any] | None, str]] = {
    "ours-fp32": ({"train": {"amp": "off", "channels_last": False}}, None, "fp32, channels-first"),
    "ours-bf16": ({"train": {"amp": "bf16", "channels_last": True}}, None, "bf16 autocast, channels-last"),
    "ours-channels-first": ({"train": {"channels_last": False}}, None, "--amp auto, channels-first"),
    "ours-unfused": ({}, _unfused, "optimiser's per-tensor loop, not fused"),
    "ours-compile": ({"train": {"compile": True}}, None, "torch.compile of the model"),
    "ours-no-augment": ({"train": {"augment": False}}, None, "no crop/flip (augmentation cost)"),
    "ours-batch128": ({"train": {"batch_size": 128}}, None, "batch 128 (images/s counted per image)"),
}


class _Cifar10(torchvision.datasets.CIFAR10):
    """torchvision's reader, with the md5 check replaced by an existence check.

    The development copy of CIFAR-10 (cifar10-mini) and the tests' synthetic copies are not
    byte-identical to the official files, so torchvision's md5 checks would refuse them; the data
    are read as torchvision reads them.
    """

    def _check_integrity(self) -> bool:
        root = Path(self.root) / self.base_folder
        return all((root / name).is_file() for name, _ in self.train_list + self.test_list)

    def _load_meta(self) -> None:
        import pickle

        with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


def _training_set(data_dir: Path, size: int) -> _Cifar10:
    """The tutorials' pipeline: per-image PIL crop with 4 px padding, flip, (resize), to tensor, normalise."""
    mean, std = CIFAR_STATS["cifar10"]
    ops = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    if size != 32:
        ops.append(transforms.Resize(size, antialias=True))
    ops += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return _Cifar10(str(data_dir), train=True, transform=transforms.Compose(ops), download=False)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class _Pipeline:
    """What every pipeline is timed on: the data, the model's stem and input size, the batch, and
    the untimed (warm-up) and timed steps of each round."""

    data_dir: Path
    stem: str
    size: int
    batch: int
    steps: int
    warmup: int
    device: torch.device


@dataclass
class Conventional(_Pipeline):
    """The tutorials' loop, kept alive between rounds (its workers stay warm)."""

    workers: int = 2
    first_step_s: float | None = None

    def __post_init__(self) -> None:
        self.loader = DataLoader(
            _training_set(self.data_dir, self.size),
            batch_size=self.batch,
            shuffle=True,
            num_workers=self.workers,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
            persistent_workers=self.workers > 0,
        )
        self.batches = self._forever()
        torch.manual_seed(0)
        self.model = resnet34(num_classes=10, stem=self.stem).to(self.device).train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def _forever(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield from self.loader

    def _step(self) -> None:
        x, y = next(self.batches)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        loss = F.cross_entropy(self.model(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def __call__(self) -> Measure:
        tick = time.perf_counter()
        for i in range(self.warmup):
            self._step()
            if i == 0 and self.first_step_s is None:
                _sync(self.device)
                self.first_step_s = time.perf_counter() - tick
        _sync(self.device)
        start = time.perf_counter()
        for _ in range(self.steps):
            self._step()
        _sync(self.device)
        return Measure(self.batch * self.steps, time.perf_counter() - start)


class _Enough(Exception):
    """Raised from the progress callback after the last timed step: the run stops there, and its
    unfinished run folder is removed by ``train`` (nothing was saved)."""


class _Clock(training.NullProgress):
    def __init__(self, total: int, device: torch.device, on_step: Callable[[], None] | None = None) -> None:
        self.total, self.device, self.on_step = total, device, on_step
        self.started = 0.0
        self.times: list[float] = []

    def start(self, **_: Any) -> None:
        self.started = time.perf_counter()

    def step(self, **_: Any) -> None:
        _sync(self.device)
        self.times.append(time.perf_counter())
        if self.on_step is not None:
            self.on_step()
        if len(self.times) == self.total:
            raise _Enough


@dataclass
class Ours(_Pipeline):
    """``train()`` as the CLI runs it, one fresh run per round, stopped after the timed steps."""

    runs: Path = Path("runs")
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    context: Callable[[], Any] | None = None
    first_step_s: float | None = None
    step_s: list[float] = field(default_factory=list)

    def settings(self):
        base: dict[str, dict[str, Any]] = {
            "data": {"dataset": "cifar10", "data_dir": str(self.data_dir), "download": False, "val_size": 0},
            "model": {"stem": self.stem, "image_size": self.size},
            "train": {
                "init": "none",
                "epochs": 1,
                "batch_size": self.batch,
                "lr": 0.05,
                "schedule": "constant",
                "limit_batches": self.steps + self.warmup,
                "runs_dir": str(self.runs),
            },
        }
        for section, values in self.overrides.items():
            base.setdefault(section, {}).update(values)
        return load_settings(None, {"device": self.device.type, **base})

    def run(self, clock: _Clock) -> None:
        with self.context() if self.context else _nothing():
            try:
                training.train(self.settings(), clock)
            except _Enough:
                return
        raise RuntimeError("the run ended before the timed steps were done (too few training images?)")

    def __post_init__(self) -> None:
        t = self.settings().train
        self.batch = t.batch_size  # a variant may change it: images are counted with it
        self.precision_reason = None
        if t.amp == "auto":  # decided once, as a whole run decides it (a round's few steps are too short to time)
            chosen = resolve_precision(
                "auto",
                t.channels_last,
                self.device,
                timer=plan.step_timer(self.settings(), self.device),
                run_steps=10**6,
            )
            self.overrides = {
                **self.overrides,
                "train": {**self.overrides.get("train", {}), "amp": chosen.amp, "channels_last": chosen.channels_last},
            }
            self.precision_reason = chosen.reason

    def __call__(self) -> Measure:
        clock = _Clock(self.warmup + self.steps, self.device)
        self.run(clock)
        t = clock.times
        if self.first_step_s is None:
            self.first_step_s = t[0] - clock.started
        self.step_s += [b - a for a, b in zip(t[self.warmup - 1 :], t[self.warmup :], strict=False)]
        return Measure(self.batch * self.steps, t[-1] - t[self.warmup - 1])


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def make_pipelines(args: argparse.Namespace, stem: str, size: int, runs: Path) -> dict[str, Any]:
    common = {
        "data_dir": args.data_dir,
        "stem": stem,
        "size": size,
        "batch": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "device": torch.device(args.device),
    }
    pipes: dict[str, Any] = {
        "conventional": Conventional(workers=args.workers, **common),
        "ours": Ours(runs=runs, **common),
    }
    for name in args.variants:
        overrides, context, _ = VARIANTS[name]
        pipes[name] = Ours(runs=runs, overrides=overrides, context=context, **common)
    return pipes


def _precision(pipe: Any, device: torch.device) -> str:
    if isinstance(pipe, Conventional):
        return "fp32"
    t = pipe.settings().train
    return resolve_precision(t.amp, t.channels_last, device).amp.replace("off", "fp32")


def _row(
    name: str, pipe: Any, rounds: Rounds, flops: float, rates: dict[str, float], device: torch.device, train_images: int
) -> dict[str, Any]:
    ips = rounds.images_per_s(name)
    stats = rounds.stats(name)
    dtype = _precision(pipe, device)
    row = {
        "pipeline": name,
        "precision": dtype,
        "images_per_s": ips,
        "ratio_median": stats.median,
        "ratio_q1": stats.q1,
        "ratio_q3": stats.q3,
        "ratio_min": stats.low,
        "ratio_max": stats.high,
        "ratio_spread": stats.spread,
        "stable": stats.stable if name != rounds.baseline else None,
        "gflops_per_s": ips * flops / 1e9,
        "share_of_bf16_matmul": ips * flops / 1e9 / rates["bf16"],
        "share_of_own_dtype_matmul": ips * flops / 1e9 / rates.get(dtype, rates["fp32"]),
        "first_step_s": pipe.first_step_s,
        "precision_reason": getattr(pipe, "precision_reason", None),
    }
    if isinstance(pipe, Ours) and pipe.step_s:
        step = statistics.median(pipe.step_s)
        row["median_step_s"] = step
        row["extra_first_step_s"] = (pipe.first_step_s or 0.0) - step  # compile time, for ours-compile
        row["steps_per_epoch_full_data"] = -(-train_images // pipe.batch)
    return row


def _compile_pays(rows: list[dict[str, Any]]) -> str | None:
    by = {r["pipeline"]: r for r in rows}
    if "ours-compile" not in by or "median_step_s" not in by.get("ours", {}):
        return None
    eager, comp = by["ours"], by["ours-compile"]
    saved = eager["median_step_s"] - comp["median_step_s"]
    cost, steps = comp["extra_first_step_s"], comp["steps_per_epoch_full_data"]
    if saved <= 0:
        return (
            f"torch.compile: {cost:.0f} s to compile and no faster per step ({-saved * 1000:.0f} ms slower): never pays"
        )
    return (
        f"torch.compile: {cost:.0f} s to compile, {saved * 1000:.0f} ms saved per step: pays after "
        f"{cost / saved:.0f} steps; one epoch of these training images is {steps} steps"
    )


def profile(args: argparse.Namespace, stem: str, size: int, runs: Path, steps: int) -> list[dict[str, Any]]:
    """torch.profiler over ``steps`` steps of ours after the warm-up: where the time goes."""
    from torch.profiler import ProfilerActivity, schedule

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    pipe = Ours(
        data_dir=args.data_dir,
        stem=stem,
        size=size,
        batch=args.batch_size,
        steps=steps,
        warmup=args.warmup,
        device=torch.device(args.device),
        runs=runs,
    )
    when = schedule(wait=0, warmup=args.warmup, active=steps, repeat=1)
    with torch.profiler.profile(activities=acts, schedule=when) as prof:
        pipe.run(_Clock(args.warmup + steps, pipe.device, on_step=prof.step))
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.profile_top]
    return [
        {
            "op": e.key,
            "calls": e.count // steps,
            "self_ms_per_step": e.self_cpu_time_total / 1000 / steps,
            "share": e.self_cpu_time_total / total,
        }
        for e in top
    ]


# -----------------------------------------------------------------------------------------------
# Accuracy: both pipelines, several epochs, the same recipe
# -----------------------------------------------------------------------------------------------


@torch.inference_mode()
def _test_top1(model: torch.nn.Module, data_dir: Path, size: int, device: torch.device) -> float:
    mean, std = CIFAR_STATS["cifar10"]
    ops = ([transforms.Resize(size, antialias=True)] if size != 32 else []) + [
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ]
    test = _Cifar10(str(data_dir), train=False, transform=transforms.Compose(ops), download=False)
    model.eval()
    correct = 0
    for x, y in DataLoader(test, batch_size=500):
        correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
    return correct / len(test)


def conventional_accuracy(
    data_dir: Path, stem: str, size: int, *, epochs: int, batch: int, lr: float, workers: int, device: torch.device
) -> float:
    """Train E full epochs the conventional way (fp32, cosine per iteration); test top-1."""
    loader = DataLoader(_training_set(data_dir, size), batch_size=batch, shuffle=True, num_workers=workers)
    torch.manual_seed(0)
    model = resnet34(num_classes=10, stem=stem).to(device)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        momentum=0.9,
        nesterov=True,
    )
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


def ours_accuracy(
    data_dir: Path, stem: str, size: int, *, epochs: int, batch: int, lr: float, device: torch.device, runs: Path
) -> float:
    settings = load_settings(
        None,
        {
            "device": device.type,
            "data": {"dataset": "cifar10", "data_dir": str(data_dir), "download": False, "val_size": 0},
            "model": {"stem": stem, "image_size": size},
            "train": {
                "init": "none",
                "epochs": epochs,
                "batch_size": batch,
                "lr": lr,
                "runs_dir": str(runs),
                "schedule": "cosine",
            },
        },
    )
    return training.train(settings).test_top1


# -----------------------------------------------------------------------------------------------


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, required=True, help="folder holding cifar-10-batches-py/")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {', '.join(CONFIGS)}")
    p.add_argument("--variants", default="", help=f"also time, comma-separated: {', '.join(VARIANTS)}")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="timed steps per pipeline and round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first, every round")
    p.add_argument("--min-rounds", type=int, default=3)
    p.add_argument("--max-rounds", type=int, default=8)
    p.add_argument("--tolerance", type=float, default=0.05, help="stop when the ratios' IQR / median is within this")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the conventional pipeline")
    p.add_argument("--device", default="cpu")
    p.add_argument("--matmul-size", type=int, default=4096, help="n of the n x n matmuls that measure the limit")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS", help="also profile ours over STEPS steps")
    p.add_argument("--profile-top", type=int, default=12)
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
    args.variants = [v for v in args.variants.split(",") if v]
    args.configs = [c for c in args.configs.split(",") if c]
    for v in args.variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}: choose from {', '.join(VARIANTS)}")
    for c in args.configs:
        if c not in CONFIGS:
            p.error(f"unknown config {c!r}: choose from {', '.join(CONFIGS)}")
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be at least 1")
    return args


def _environment(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    dtypes = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    rates = {d: matmul_rate(d, device, n=args.matmul_size).gflops for d in dtypes}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "torch": torch.__version__,
        "device": str(device),
        "device_name": name,
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "cpu_matrix_flags": cpu_matrix_flags(),
        "matmul_n": args.matmul_size,
        "matmul_gflops": rates,
        "bf16_over_fp32": rates["bf16"] / rates["fp32"],
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "workers": args.workers,
        "flops_note": "forward + backward per training image, torch.utils.flop_counter",
    }


def _run_config(args: argparse.Namespace, name: str, env: dict[str, Any], runs: Path) -> dict[str, Any]:
    stem, size = CONFIGS[name]
    device = torch.device(args.device)
    flops = model_flops(stem, size, training=True)
    pipes = make_pipelines(args, stem, size, runs)
    train_images = len(_Cifar10(str(args.data_dir), train=True, download=False))

    def shout(r: Rounds) -> None:
        parts = [f"{n} {r.measures[n][-1].images_per_s:.1f}" for n in r.order]
        print(f"{name} round {r.count}: {', '.join(parts)} img/s", file=sys.stderr)

    rounds = interleave(
        pipes,
        "conventional",
        min_rounds=args.min_rounds,
        max_rounds=args.max_rounds,
        tolerance=args.tolerance,
        on_round=shout,
    )
    rows = [_row(n, p, rounds, flops, env["matmul_gflops"], device, train_images) for n, p in pipes.items()]
    out = {
        "config": name,
        "gflop_per_training_image": flops / 1e9,
        "rounds": rounds.count,
        "stable": rounds.stable,
        "rows": rows,
        "compile": _compile_pays(rows),
        "profile": None,
    }
    if args.profile:
        out["profile"] = profile(args, stem, size, runs, args.profile)
    return out


def _print(env: dict[str, Any], results: list[dict[str, Any]], accuracy: dict[str, Any] | None) -> None:
    rates = env["matmul_gflops"]
    print(
        f"{env['device_name']} ({', '.join(env['cpu_matrix_flags']) or 'no AMX/AVX-512 bf16'}), "
        f"{env['threads']} threads, torch {env['torch']}"
    )
    listed = ", ".join(f"{k} {v:.0f}" for k, v in rates.items())
    print(
        f"matmul n={env['matmul_n']}: {listed} GFLOP/s; bf16/fp32 = {env['bf16_over_fp32']:.2f}x "
        "(the most bf16 alone can give)"
    )
    for res in results:
        status = "stable" if res["stable"] else f"NOT stable within the tolerance after {res['rounds']} rounds"
        print(
            f"\n{res['config']}: {res['gflop_per_training_image']:.2f} GFLOP per training image; "
            f"{res['rounds']} rounds, {status}"
        )
        print(
            f"{'pipeline':<20} {'prec':>5} {'img/s':>7} {'speed-up [IQR] (min-max)':>28} {'GFLOP/s':>8} "
            f"{'% bf16 mm':>9} {'% own mm':>8}"
        )
        for r in res["rows"]:
            ratio = (
                f"{r['ratio_median']:.2f}x [{r['ratio_q1']:.2f}-{r['ratio_q3']:.2f}] "
                f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f})"
            )
            print(
                f"{r['pipeline']:<20} {r['precision']:>5} {r['images_per_s']:>7.1f} {ratio:>28} "
                f"{r['gflops_per_s']:>8.0f} {r['share_of_bf16_matmul']:>9.0%} {r['share_of_own_dtype_matmul']:>8.0%}"
            )
        if res["compile"]:
            print(res["compile"])
        for p in res["profile"] or []:
            print(f"  {p['share']:>6.1%} {p['self_ms_per_step']:>8.1f} ms/step {p['calls']:>5} calls/step  {p['op']}")
    if accuracy:
        print(
            f"\ntest top-1 after {accuracy['epochs']} epochs ({accuracy['config']}): conventional "
            f"{accuracy['conventional_test_top1']:.4f}, cifar-resnet {accuracy['ours_test_top1']:.4f}"
        )


def main() -> int:
    args = _args()
    device = torch.device(args.device)
    env = _environment(args, device)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            results.append(_run_config(args, name, env, Path(tmp)))
    accuracy = None
    if args.accuracy_epochs:
        stem, size = CONFIGS[args.accuracy_config]
        with tempfile.TemporaryDirectory() as tmp:
            kw = {"epochs": args.accuracy_epochs, "batch": args.accuracy_batch_size, "lr": args.lr, "device": device}
            a = conventional_accuracy(args.data_dir, stem, size, workers=args.workers, **kw)
            b = ours_accuracy(args.data_dir, stem, size, runs=Path(tmp), **kw)
        accuracy = {
            "config": args.accuracy_config,
            "epochs": args.accuracy_epochs,
            "conventional_test_top1": a,
            "ours_test_top1": b,
        }
    if args.json:
        print(json.dumps({"environment": env, "results": results, "accuracy": accuracy}, indent=2))
    else:
        _print(env, results, accuracy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
