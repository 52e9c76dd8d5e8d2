"""``bench``: eager, traced, scripted, frozen, compiled and deployed (AOTInductor, ONNX Runtime, OpenVINO)
ResNet34 timed side by side, honestly.

Every variant runs in one process on the same input, gets the same warm-up (TorchScript's profiling
executor optimises during its first calls; the very first call is reported on its own as cold
start, and for ``compile`` it holds the compile time; a deployed variant's file is built first and that
time is reported as ``build_s``), runs under ``torch.inference_mode()``, and
is timed call by call with CUDA synchronised around each call. Reported: median, p90, mean and
spread, images per second, speed-up over eager fp32 with its spread, and each variant's output
against eager fp32, so that a fast but wrong variant shows as wrong.
"""

from __future__ import annotations

import copy
import csv
import io
import logging
import platform
import statistics
import time
from pathlib import Path

import torch
from pydantic import BaseModel

from ..core.devices import cpu_matrix_flags, cpu_name, device_description, resolve_device
from ..core.errors import CifarResnetError
from ..core.fileio import atomic_write_bytes, check_writable
from ..core.progress import Tasks, task
from ..core.settings import BenchSettings, Settings
from ..deploy.job import DTYPES, Deployed, compare, tolerances
from ..deploy.runtimes import RUNTIME_VARIANTS, Workshop, not_applicable
from ..deploy.torchscript import build_variant
from ..model.archives import MissingExtra, archive_kind, is_archive, load_archive
from ..model.resnet import resnet34
from ..model.weights import WeightsMeta, load_model
from .machine import matmul_rate, model_flops
from .timing import quantile

# The source project's headline table (average inference time, seconds; its machine and batch).
SOURCE_TABLE = {"eager": 0.0329, "trace": 0.0249, "script": 0.0269}


class Timing(BaseModel):
    variant: str
    dtype: str
    layout: str
    batch_size: int
    image_size: int
    device: str
    build_s: float | None = None  # deployed variants: writing the file (export, compile, quantize)
    cold_start_s: float | None = None
    median_s: float | None = None
    p90_s: float | None = None
    mean_s: float | None = None
    p25_s: float | None = None
    p75_s: float | None = None
    iters: int = 0
    images_per_s: float | None = None
    speedup: float | None = None
    speedup_low: float | None = None
    speedup_high: float | None = None
    max_abs_diff: float | None = None
    top1_agreement: float | None = None
    correct: bool | None = None
    baseline: bool = False
    error: str | None = None
    gflops_per_s: float | None = None  # images/s x the model's forward FLOPs
    share_of_peak: float | None = None  # of this device's matmul rate in the row's dtype


class FastestVariant(BaseModel):
    """The fastest variant whose output agrees with eager fp32, at one batch size."""

    batch_size: int
    variant: str
    dtype: str
    layout: str
    median_s: float
    images_per_s: float
    speedup: float  # over eager fp32 at the same batch size

    def describe(self) -> str:
        return f"{self.variant} {self.dtype} {self.layout} ({self.speedup:.2f}x eager fp32)"


class Environment(BaseModel):
    torch: str
    device: str
    threads: int
    cpu: str
    cpu_flags: list[str] = []  # the matrix instruction sets bf16 speed depends on (AMX, AVX-512 bf16)
    python: str
    warmup: int
    iters: int
    matmul_n: int = 0  # the device's limit: an n x n matmul per dtype (0: not measured)
    matmul_gflops: dict[str, float] = {}
    gflop_per_image: float | None = None  # the model's forward pass, torch.utils.flop_counter


class BenchResult(BaseModel):
    checkpoint: str | None
    random_init: bool
    environment: Environment
    timings: list[Timing]
    fastest_correct: dict[str, FastestVariant]  # keyed by batch size
    source_reference: dict[str, float]
    csv: str | None
    warnings: list[str]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_variant(fn, x: torch.Tensor, device: torch.device, *, warmup: int, iters: int) -> tuple[float, list[float]]:
    """The first call (cold start), then ``warmup`` untimed calls, then ``iters`` timed calls."""
    with torch.inference_mode():
        _sync(device)
        start = time.perf_counter()
        fn(x)
        _sync(device)
        cold = time.perf_counter() - start
        for _ in range(warmup):
            fn(x)
        _sync(device)
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            fn(x)
            _sync(device)
            times.append(time.perf_counter() - start)
    return cold, times


def _make(
    model: torch.nn.Module,
    variant: str,
    example: torch.Tensor,
    dtype: str,
    layout: str,
    workshop: Workshop,
    row: Timing,
) -> torch.nn.Module:
    channels_last = layout == "nhwc"
    if variant in RUNTIME_VARIANTS:
        fn, row.build_s = workshop.build(variant, dtype, layout, example.device)
        return fn
    if variant == "compile":
        # Inductor looks for a CUDA toolkit even on the CPU and logs "No CUDA runtime is found" when there
        # is none (a CUDA build of torch on a CPU machine): noise in the middle of our output, not a fault.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        return torch.compile(Deployed(copy.deepcopy(model), DTYPES[dtype], channels_last).eval())
    return build_variant(copy.deepcopy(model), variant, example, dtype=dtype, channels_last=channels_last)


def _fill(row: Timing, cold: float, times: list[float]) -> None:
    """A row's timing statistics from its cold start and its timed calls."""
    med = statistics.median(times)
    row.cold_start_s, row.median_s, row.mean_s = cold, med, statistics.fmean(times)
    row.p90_s, row.p25_s, row.p75_s = quantile(times, 0.9), quantile(times, 0.25), quantile(times, 0.75)
    row.iters, row.images_per_s = len(times), row.batch_size / med


def _error(exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"


def _time_combo(
    index: int,
    variant: str,
    dtype: str,
    layout: str,
    is_base: bool,
    model: torch.nn.Module,
    example: torch.Tensor,
    inputs: dict[int, torch.Tensor],
    references: dict[int, torch.Tensor],
    device: torch.device,
    b: BenchSettings,
    tamper: str | None,
    timings: list[Timing],
    raw: dict[tuple[int, int], list[float]],
    workshop: Workshop,
    bar: Tasks,
) -> None:
    """Build one variant (compiling it, for ``compile``) and time it at every batch size."""
    atol, min_agree = tolerances(dtype, None, None)
    fn, build_s = None, None
    for batch, x in inputs.items():
        row = Timing(
            variant=variant,
            dtype=dtype,
            layout=layout,
            batch_size=batch,
            image_size=x.shape[-1],
            device=device_description(device),
            baseline=is_base,
        )
        try:
            if fn is None:  # built once per variant, timed at every batch size
                fn = _make(model, variant, example, dtype, layout, workshop, row)
                build_s = row.build_s
                if tamper == variant and not is_base:
                    inner = fn
                    fn = lambda t, inner=inner: inner(t).roll(1, dims=1)  # noqa: E731  (a wrong variant)
            cold, times = time_variant(fn, x, device, warmup=b.warmup, iters=b.iters)
            agreement = compare(fn, references[batch], x, atol)
        except Exception as exc:  # a variant that cannot be built or run here is reported, not hidden
            row.error = _error(exc)
            timings.append(row)
            return
        _fill(row, cold, times)
        row.build_s = build_s
        row.max_abs_diff, row.top1_agreement = agreement.max_abs_diff, agreement.top1_agreement
        row.correct = agreement.ok(min_agree, check_diff=dtype != "int8")
        raw[(index, batch)] = times
        timings.append(row)
        bar.advance()


def benchmark(
    settings: Settings,
    path: Path | None = None,
    *,
    csv_path: Path | None = None,
    tamper: str | None = None,
    tasks: Tasks | None = None,
) -> BenchResult:
    """Time every requested variant x dtype x layout x batch size; compare each with eager fp32.

    ``tamper`` (tests only) names a variant whose output is made wrong, to show it is caught.
    """
    b = settings.bench
    device = resolve_device(settings.device)
    if "fp16" in b.dtypes and device.type != "cuda":
        raise CifarResnetError("fp16 is benchmarked on CUDA only", "use --dtypes fp32,bf16 on the CPU")
    if csv_path is not None:
        check_writable(csv_path, force=True, what="--csv file")
    if path is not None and is_archive(path):
        return _benchmark_archive(settings, path, device, csv_path, tasks)
    model, size, warnings = _model_to_time(settings, path)
    model.eval().to(device)
    gen = torch.Generator().manual_seed(settings.train.seed)
    inputs = {batch: torch.randn(batch, 3, size, size, generator=gen).to(device) for batch in b.batch_sizes}
    with torch.inference_mode():
        references = {batch: model(x).float() for batch, x in inputs.items()}
    example = torch.randn(2, 3, size, size, generator=gen).to(device)  # ResNet graphs do not depend on the batch
    combos, skipped = _combos(b, device)
    if skipped:
        warnings.append(f"not timed, cannot exist: {'; '.join(skipped)}")
    if "int8" in b.dtypes:
        warnings.append(
            "int8 rows are calibrated on random inputs like the timed ones, so their agreement is "
            "indicative only; `export --dtype int8` calibrates on real images and measures the accuracy "
            "drop on held-out ones"
        )
    calibration = list(torch.randn(64, 3, size, size, generator=gen).split(16))
    workshop = Workshop(model, example, calibration)
    timings: list[Timing] = []
    raw: dict[tuple[int, int], list[float]] = {}  # (combo index, batch) -> call times
    try:
        for index, (variant, dtype, layout, is_base) in enumerate(combos):
            with task(tasks, f"{variant} {dtype} {layout}: build, warm up, time", len(inputs)) as bar:
                combo = (index, variant, dtype, layout, is_base)
                _time_combo(*combo, model, example, inputs, references, device, b, tamper, timings, raw, workshop, bar)
    finally:
        workshop.close()
    _add_speedups(timings, raw)
    timings.sort(key=lambda t: b.batch_sizes.index(t.batch_size))  # stable: variant order kept per batch
    env = _environment(settings, device, stem=model.stem, size=size, timings=timings)
    if csv_path is not None:
        _write_csv(csv_path, timings)
    return BenchResult(
        checkpoint=str(path) if path else None,
        random_init=path is None,
        environment=env,
        timings=timings,
        fastest_correct=_fastest(timings, b.batch_sizes),
        source_reference=SOURCE_TABLE,
        csv=str(csv_path) if csv_path else None,
        warnings=warnings,
    )


def _model_to_time(settings: Settings, path: Path | None) -> tuple[torch.nn.Module, int, list[str]]:
    """The checkpoint's model at its image size (or the one asked for), else a random-initialised one."""
    if path is not None:
        model, meta = load_model(path)
        size = settings.model.image_size if "image_size" in settings.model.model_fields_set else meta.image_size
        return model, size, []
    torch.manual_seed(settings.train.seed)
    model = resnet34(num_classes=settings.num_classes, stem=settings.model.stem)
    return (
        model,
        settings.model.image_size,
        [
            f"no checkpoint: benchmarking a random-initialised ResNet34 ({settings.model.stem} stem, "
            f"{settings.num_classes} classes); timings do not depend on the weights, agreement figures do"
        ],
    )


def _add_speedups(timings: list[Timing], raw: dict[tuple[int, int], list[float]]) -> None:
    """Speed-up over eager fp32 at the same batch size, with its spread (IQR)."""
    for row in timings:
        base = raw.get((0, row.batch_size))
        if base and row.median_s:
            row.speedup = statistics.median(base) / row.median_s
            row.speedup_low = quantile(base, 0.25) / (row.p75_s or row.median_s)
            row.speedup_high = quantile(base, 0.75) / (row.p25_s or row.median_s)


def _fastest(timings: list[Timing], batch_sizes: list[int]) -> dict[str, FastestVariant]:
    """The fastest variant whose output agrees with eager, per batch size."""
    fastest = {}
    for batch in batch_sizes:
        ok = [t for t in timings if t.batch_size == batch and t.correct and t.median_s and t.speedup]
        if ok:
            best = min(ok, key=lambda t: t.median_s or 0)
            fastest[str(batch)] = FastestVariant(
                batch_size=batch,
                variant=best.variant,
                dtype=best.dtype,
                layout=best.layout,
                median_s=best.median_s or 0.0,
                images_per_s=best.images_per_s or 0.0,
                speedup=best.speedup or 0.0,
            )
    return fastest


def _combos(b: BenchSettings, device: torch.device) -> tuple[list[tuple[str, str, str, bool]], list[str]]:
    """Eager fp32 NCHW first (the baseline), then every requested variant x dtype x layout that can exist."""
    combos, skipped = [("eager", "fp32", "nchw", True)], []
    for d in b.dtypes:
        for lay in b.layouts:
            for v in b.variants:
                reason = not_applicable(v, d, lay, device)
                if reason is not None:
                    skipped.append(reason)
                elif not (v == "eager" and d == "fp32" and lay == "nchw"):
                    combos.append((v, d, lay, False))
    return combos, list(dict.fromkeys(skipped))


def _write_csv(path: Path, timings: list[Timing]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(Timing.model_fields))
    writer.writeheader()
    for t in timings:
        writer.writerow(t.model_dump())
    atomic_write_bytes(path, buf.getvalue().encode())


def _environment(
    settings: Settings, device: torch.device, *, stem: str, size: int, timings: list[Timing]
) -> Environment:
    """Where the timings ran, and the device's limit: the rate of an n x n matmul in each dtype that
    was timed (measured after the timings, so it does not warm the device for them), and every row's
    share of it."""
    b = settings.bench
    env = Environment(
        torch=torch.__version__,
        device=device_description(device),
        threads=torch.get_num_threads(),
        cpu=cpu_name(),
        cpu_flags=cpu_matrix_flags(),
        python=platform.python_version(),
        warmup=b.warmup,
        iters=b.iters,
    )
    if not b.peak_matmul:
        return env
    flops = model_flops(stem, size, training=False)
    dtypes = sorted({t.dtype for t in timings if t.dtype in DTYPES} | {"fp32"})
    env.matmul_n, env.gflop_per_image = b.peak_matmul, flops / 1e9
    env.matmul_gflops = {d: matmul_rate(d, device, n=b.peak_matmul, min_seconds=0.25).gflops for d in dtypes}
    for t in timings:
        if t.images_per_s:
            t.gflops_per_s = t.images_per_s * flops / 1e9
            rate = env.matmul_gflops.get(t.dtype)
            t.share_of_peak = t.gflops_per_s / rate if rate else None
    return env


def _archive_runners(path: Path, device: torch.device) -> tuple[list[tuple[str, object]], WeightsMeta, dict, list[str]]:
    """(label, callable) for each runtime that runs this archive here: ONNX files in ONNX Runtime and, when
    installed, OpenVINO; TorchScript and AOTInductor in torch."""
    module, meta, extra = load_archive(path, device)
    method = extra.get("export_method", "?")
    if archive_kind(path) != "onnx":
        return [(f"archive ({method})", module)], meta, extra, []
    runners, notes = [(f"archive ({method}, onnxruntime)", module)], []
    try:
        runners.append((f"archive ({method}, openvino)", load_archive(path, device, runtime="openvino")[0]))
    except MissingExtra as exc:
        notes.append(f"not timed with OpenVINO: {exc}")
    return runners, meta, extra, notes


def _benchmark_archive(
    settings: Settings, path: Path, device: torch.device, csv_path: Path | None, tasks: Tasks | None
) -> BenchResult:
    """Time an archive from ``export`` as it will be shipped: exactly that file, loaded as our loaders
    load it (an ONNX file by each installed runtime), at every batch size. It carries no eager model, so
    there is nothing to compare it with."""
    b = settings.bench
    runners, meta, extra, warnings = _archive_runners(path, device)
    size = settings.model.image_size if "image_size" in settings.model.model_fields_set else meta.image_size
    gen = torch.Generator().manual_seed(settings.train.seed)
    inputs = {batch: torch.randn(batch, 3, size, size, generator=gen).to(device) for batch in b.batch_sizes}
    layout = "nhwc" if extra.get("export_channels_last") else "nchw"
    timings = []
    for label, fn in runners:
        for batch, x in inputs.items():
            row = Timing(
                variant=label,
                dtype=extra.get("export_dtype", "?"),
                layout=layout,
                batch_size=batch,
                image_size=size,
                device=device_description(device),
            )
            try:
                with task(tasks, f"{row.variant} {row.dtype} {layout}, batch {batch}: warm up, time", None):
                    cold, times = time_variant(fn, x, device, warmup=b.warmup, iters=b.iters)
            except Exception as exc:  # reported in its row, like a variant that cannot run here
                row.error = _error(exc)
                timings.append(row)
                continue
            _fill(row, cold, times)
            timings.append(row)
    if csv_path is not None:
        _write_csv(csv_path, timings)
    warnings.append(
        f"{path} is an archive: it is timed alone (no eager model inside it to compare with); bench "
        "the checkpoint it was exported from for speed-ups and agreement"
    )
    env = _environment(settings, device, stem=meta.stem, size=size, timings=timings)
    return BenchResult(
        checkpoint=str(path),
        random_init=False,
        environment=env,
        timings=timings,
        fastest_correct={},
        source_reference=SOURCE_TABLE,
        csv=str(csv_path) if csv_path else None,
        warnings=warnings,
    )
