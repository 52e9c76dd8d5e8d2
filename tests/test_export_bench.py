from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_fp32_close

from cifar_resnet_cli.core.settings import load_settings
from cifar_resnet_cli.data.augment import preprocess
from cifar_resnet_cli.data.loading import load_dataset
from cifar_resnet_cli.deploy import torchscript as export_module
from cifar_resnet_cli.deploy.export import METADATA_FILE, ExportResult, build_variant
from cifar_resnet_cli.measure.bench import BenchResult, benchmark
from cifar_resnet_cli.model.resnet import resnet34
from cifar_resnet_cli.model.weights import load_model


@pytest.fixture
def checkpoint(cli, tmp_path: Path) -> Path:
    path = tmp_path / "w.safetensors"
    assert cli("port", "--weights", "none", "--dataset", "synthetic", "--out", path).exit_code == 0
    return path


@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
@pytest.mark.parametrize("method", ["trace", "script", "frozen"])
@pytest.mark.numerics
def test_variants_of_both_stems_match_eager(stem: str, method: str) -> None:
    model = resnet34(num_classes=10, stem=stem).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        expected = model(x)
        variant = build_variant(model, method, torch.randn(2, 3, 32, 32))
        out = variant(x)
    assert_fp32_close(out, expected)


@pytest.mark.numerics
def test_export_writes_verified_archives_with_metadata(cli, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "exports" / "v1"  # made when missing
    torchscript = ["--method", "trace", "--method", "script", "--method", "frozen"]  # onnx, aoti: test_archives.py
    result = ExportResult.model_validate(cli.json("export", checkpoint, *torchscript, "--out", out))
    assert [a.method for a in result.archives] == ["trace", "script", "frozen"]
    assert all(a.agreement.top1_agreement == 1.0 and a.agreement.images == 5 for a in result.archives)
    model, meta = load_model(checkpoint)
    x = torch.randn(7, 3, 32, 32)
    with torch.inference_mode():
        expected = model.eval()(x)
    for archive in result.archives:
        extra = {METADATA_FILE: ""}
        loaded = torch.jit.load(archive.path, map_location="cpu", _extra_files=extra)  # plain PyTorch
        data = json.loads(extra[METADATA_FILE])
        assert data["class_names"] == meta.class_names and data["mean"] == list(meta.mean)
        assert data["image_size"] == 32 and data["export_method"] == archive.method
        assert data["exported_from_sha256"] == result.checkpoint_sha256 and data["source_sha256"] == "none"
        with torch.inference_mode():
            assert_fp32_close(loaded(x), expected)
    assert sorted(p.name for p in out.iterdir()) == ["w.frozen.pt", "w.script.pt", "w.trace.pt"]


def test_reduced_precision_archive(cli, checkpoint: Path, tmp_path: Path) -> None:
    r = ExportResult.model_validate(
        cli.json("export", checkpoint, "--method", "frozen", "--dtype", "bf16", "--channels-last", "--out", tmp_path)
    )
    archive = r.archives[0]
    assert archive.dtype == "bf16" and archive.channels_last and Path(archive.path).name == "w.frozen.bf16.cl.pt"
    assert archive.min_agreement == 0.9 and archive.atol == 5e-2
    assert torch.jit.load(archive.path)(torch.randn(2, 3, 32, 32)).dtype == torch.float32


def test_a_broken_archive_is_caught_and_not_kept(cli, checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    original = export_module.build_variant

    def broken(model, method, example, **kw):
        with torch.no_grad():
            model.layer2[0].bn1.running_mean.add_(0.5)  # the archive computes something else
        return original(model, method, example, **kw)

    monkeypatch.setattr(export_module, "build_variant", broken)
    r = cli("export", checkpoint, "--method", "script", "--out", tmp_path)
    assert r.exit_code == 1 and "differs from the eager model" in r.err and "nothing was written" in r.err
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob(".*.tmp"))


def test_archive_loads_with_map_location(cli, checkpoint: Path, tmp_path: Path) -> None:
    r = cli.json("export", checkpoint, "--method", "trace", "--out", tmp_path)
    path = r["archives"][0]["path"]
    graph = torch.jit.load(path, map_location="cpu").graph
    assert "cuda" not in str(graph)  # traced on the CPU, no device baked in
    assert torch.jit.load(path, map_location=torch.device("cpu"))(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.numerics
def test_eval_of_an_archive_equals_eval_of_its_checkpoint(cli, tmp_path: Path) -> None:
    run = cli.json(
        "train",
        "--dataset",
        "synthetic",
        "--synthetic-size",
        "600",
        "--val-size",
        "200",
        "--init",
        "none",
        "--epochs",
        "1",
        "--batch-size",
        "50",
        "--limit-batches",
        "4",
    )
    ckpt = Path(run["run_dir"]) / "best.safetensors"
    exported = cli.json("export", ckpt, "--method", "trace", "--method", "script", "--freeze", "--out", tmp_path)
    reference = cli.json("eval", ckpt)
    # trace and script run eager's operations on the same batches: the same predictions, exactly.
    # frozen folds BatchNorm into the convolutions, which rounds differently (see assert_fp32_close):
    # only an image whose two best eager logits lie within that tolerance may change its prediction.
    model, meta = load_model(ckpt)
    data = load_dataset(
        "synthetic",
        tmp_path / "cache" / "cifar-resnet" / "data",
        download=False,
        val_size=200,
        split_seed=0,
        synthetic_size=600,
    )
    with torch.inference_mode():
        logits = model.eval()(preprocess(data.test.images, meta.mean, meta.std, meta.image_size))
    top2 = logits.topk(2, dim=1).values
    undecided = int(((top2[:, 0] - top2[:, 1]) <= 1e-4 * max(1.0, float(logits.abs().max()))).sum())
    for archive in exported["archives"]:
        result = cli.json("eval", archive["path"])
        if archive["method"] != "frozen":
            assert result["top1"] == reference["top1"] and result["confusion"] == reference["confusion"]
            continue
        moved = sum(
            abs(a - b)
            for ra, rb in zip(result["confusion"], reference["confusion"], strict=True)
            for a, b in zip(ra, rb, strict=True)
        )
        assert moved <= 2 * undecided, (moved, undecided)
        assert abs(result["top1"] - reference["top1"]) * result["images"] <= undecided + 1e-9


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["export", "missing.safetensors"], 1, "does not exist"),
        (["bench", "missing.safetensors"], 1, "does not exist"),
        (["bench", "--batch-sizes", "0"], 2, "--batch-sizes"),
        (["bench", "--variants", "eager,onnx"], 2, "--variants"),
        (["bench", "--device", "cuda"], 1, "CUDA is not available"),
        (["export", "notes.safetensors"], 1, "not a readable safetensors file"),
        (["export", "w.safetensors", "--example-batch", "5"], 1, "must differ"),
        (["export", "w.safetensors", "--out", "w.safetensors"], 1, "is a file, not a folder"),
    ],
)
def test_bad_input(cli, checkpoint: Path, args: list[str], code: int, message: str) -> None:
    if torch.cuda.is_available() and "cuda" in args:
        pytest.skip("this machine has CUDA")
    Path("notes.safetensors").write_text("not weights")
    Path("w.safetensors").write_bytes(checkpoint.read_bytes())
    r = cli(*args)
    assert r.exit_code == code, r.stderr
    assert message in r.err and "Traceback" not in r.stderr


def test_bench_json_has_every_variant_and_agreement(cli) -> None:
    data = cli.json(
        "bench",
        "--variants",
        "eager,trace,script,frozen",
        "--dtypes",
        "fp32,bf16",
        "--batch-sizes",
        "1,3",
        "--warmup",
        "1",
        "--iters",
        "3",
    )
    result = BenchResult.model_validate(data)
    assert result.random_init and "random-initialised" in result.warnings[0]
    for batch in (1, 3):
        rows = [t for t in result.timings if t.batch_size == batch]
        assert {(t.variant, t.dtype) for t in rows} == {
            (v, d) for v in ("eager", "trace", "script", "frozen") for d in ("fp32", "bf16")
        }
        assert sum(t.baseline for t in rows) == 1
        for t in rows:
            assert t.error is None and t.correct and t.iters == 3 and t.median_s > 0 and t.cold_start_s > 0
            assert t.images_per_s == pytest.approx(batch / t.median_s)
    assert set(result.fastest_correct) == {"1", "3"}
    for batch, best in result.fastest_correct.items():  # fields, not a sentence
        rows = [t for t in result.timings if t.batch_size == int(batch) and t.correct]
        fastest = min(rows, key=lambda t: t.median_s)
        assert (best.batch_size, best.variant, best.dtype, best.layout) == (
            fastest.batch_size,
            fastest.variant,
            fastest.dtype,
            fastest.layout,
        )
        assert (best.median_s, best.speedup) == (fastest.median_s, fastest.speedup)
    # The device's limit, measured by bench itself: a matmul rate per timed dtype, each row's share of it.
    env = result.environment
    assert env.matmul_n == 2048 and set(env.matmul_gflops) == {"fp32", "bf16"}
    assert all(rate > 0 for rate in env.matmul_gflops.values())
    assert env.gflop_per_image == pytest.approx(0.1495, abs=0.001)  # imagenet stem, 32 px, forward
    for t in result.timings:
        assert t.gflops_per_s == pytest.approx(t.images_per_s * env.gflop_per_image)
        assert t.share_of_peak == pytest.approx(t.gflops_per_s / env.matmul_gflops[t.dtype])


def test_bench_peak_matmul_zero_skips_the_limit(cli) -> None:
    data = cli.json(
        "bench", "--variants", "eager", "--batch-sizes", "2", "--warmup", "0", "--iters", "3", "--peak-matmul", "0"
    )
    assert data["environment"]["matmul_gflops"] == {} and data["timings"][0]["share_of_peak"] is None
    assert cli("bench", "--peak-matmul", "-1").exit_code == 2


def test_a_wrong_variant_is_reported_as_wrong(tmp_path: Path) -> None:
    settings = load_settings(
        None, {"bench": {"variants": ["eager", "trace"], "batch_sizes": [4], "warmup": 0, "iters": 3}}
    )
    result = benchmark(settings, tamper="trace", csv_path=tmp_path / "b.csv")
    trace = next(t for t in result.timings if t.variant == "trace")
    assert trace.correct is False and trace.top1_agreement < 1.0
    assert result.fastest_correct["4"].variant != "trace"
    lines = (tmp_path / "b.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("variant,dtype,layout")


def test_bench_times_an_archive_exactly_as_shipped(cli, checkpoint: Path, tmp_path: Path) -> None:
    exported = cli.json(
        "export", checkpoint, "--method", "trace", "--method", "script", "--freeze", "--out", tmp_path / "exports"
    )
    common = ["--batch-sizes", "1,2", "--warmup", "0", "--iters", "3"]
    for other in exported["archives"][1:]:  # every TorchScript method (onnx and aoti: test_archives.py)
        rows = cli.json("bench", other["path"], *common)["timings"]
        assert [r["variant"] for r in rows] == [f"archive ({other['method']})"] * 2 and all(r["median_s"] for r in rows)
    archive = exported["archives"][0]["path"]
    result = BenchResult.model_validate(cli.json("bench", archive, *common, "--csv", tmp_path / "b.csv"))
    assert [(t.variant, t.dtype, t.batch_size) for t in result.timings] == [
        ("archive (trace)", "fp32", 1),
        ("archive (trace)", "fp32", 2),
    ]
    assert all(t.error is None and t.median_s > 0 and t.iters == 3 and t.correct is None for t in result.timings)
    assert result.fastest_correct == {} and "timed alone" in result.warnings[0]
    assert len((tmp_path / "b.csv").read_text().splitlines()) == 3
    table = cli("bench", archive, *common)
    assert table.exit_code == 0 and "compared" in table.stdout and "WRONG" not in table.stdout
    assert "…" not in table.stdout  # 80 columns: no cell cut short
