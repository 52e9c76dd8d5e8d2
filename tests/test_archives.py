"""ONNX (fp32, int8) and AOTInductor archives: written, read back by their plain runtimes, used by eval,
predict and bench, and refused when wrong. One export of each kind serves the module (an AOTInductor
compile of ResNet34 takes about 20 s on 2 cores)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Cli, squash

from cifar_resnet_cli.cli import render as report
from cifar_resnet_cli.core.settings import load_settings
from cifar_resnet_cli.data.augment import preprocess
from cifar_resnet_cli.data.loading import load_dataset
from cifar_resnet_cli.deploy import aoti as aoti_writer
from cifar_resnet_cli.deploy import export as export_module
from cifar_resnet_cli.deploy import onnx as onnx_writer
from cifar_resnet_cli.deploy import runtimes as runtimes_module
from cifar_resnet_cli.deploy.export import ExportResult, methods_for_all
from cifar_resnet_cli.measure.bench import BenchResult
from cifar_resnet_cli.model import archives as archives_module
from cifar_resnet_cli.model.weights import load_model, save_weights

onnx = pytest.importorskip("onnx", reason="the [onnx] extra is part of make test")
ort = pytest.importorskip("onnxruntime", reason="the [onnx] extra is part of make test")

SYNTHETIC = ["--synthetic-size", "800", "--val-size", "300"]
# The module's tests share one trained checkpoint and one export of each kind: one xdist worker runs them all.
pytestmark = pytest.mark.xdist_group("archives")


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint that has learned the synthetic classes (feature extraction from a random backbone on
    cached features: seconds, and well above chance, so int8 has accuracy to lose). The backbone is
    torchvision's random initialisation (``port --weights none``), every residual branch live, as in
    pretrained weights; ``--init none`` zeroes them, which would leave some convolutions without effect."""
    root = tmp_path_factory.mktemp("trained")
    backbone = root / "random.safetensors"
    port = Cli()("port", "--weights", "none", "--dataset", "synthetic", "--out", backbone)
    assert port.exit_code == 0, port.stderr
    r = Cli()(
        "train",
        "--dataset",
        "synthetic",
        *SYNTHETIC,
        "--init",
        backbone,
        "--freeze-backbone",
        "--epochs",
        "8",
        "--batch-size",
        "64",
        "--optimizer",
        "adamw",
        "--lr",
        "0.01",
        "--runs-dir",
        root / "runs",
        "--json",
        env={"CIFAR_RESNET_DATA__DATA_DIR": str(root / "data")},
    )
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["test_top1"] > 0.4, summary["test_top1"]  # chance is 0.1
    return Path(summary["best_checkpoint"])


@pytest.fixture(scope="session")
def exported(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("exports")
    env = {"CIFAR_RESNET_DATA__DATA_DIR": str(trained.parent.parent.parent / "data")}
    r = Cli()("export", trained, "--method", "onnx", "--method", "aoti", "--out", out, "--json", env=env)
    assert r.exit_code == 0, r.stderr
    result = ExportResult.model_validate_json(r.stdout)
    # A few images more or less per CPU's int8 kernels: 3 points of 300 images is 9 of them.
    # GPTQ rounding here (nearest, the default, is what the other int8 exports of the suite use).
    r8 = Cli()(
        "export",
        trained,
        "--method",
        "all",
        "--dtype",
        "int8",
        "--calibration-images",
        "128",
        "--weight-rounding",
        "gptq",
        "--max-accuracy-drop",
        "3",
        "--out",
        out,
        "--json",
        env=env,
    )
    assert r8.exit_code == 0, r8.stderr
    int8 = ExportResult.model_validate_json(r8.stdout)
    assert [a.method for a in int8.archives] == ["onnx"]  # all, for int8, is ONNX only
    paths = {a.kind: Path(a.path) for a in result.archives} | {"int8": Path(int8.archives[0].path)}
    paths["summary"] = out / "int8.json"
    paths["summary"].write_text(r8.stdout)
    return paths


def test_the_int8_sensitivity_benchmark_measures_the_file_export_writes(trained: Path, exported) -> None:
    """benchmarks/int8_sensitivity.py calibrates as export does: its whole-model entry is the archive's own
    held-out score, image for image (the same calibration images, quantizer and thread count)."""
    root = Path(__file__).resolve().parents[1]
    script = root / "benchmarks" / "int8_sensitivity.py"
    cmd = [
        sys.executable,
        str(script),
        str(trained),
        "--calibration-images",
        "128",
        "--weight-rounding",
        "gptq",
        "--stages",
        "fc",
    ]  # each stage is an export and a calibration: one shows the mechanism
    env = {**os.environ, "CIFAR_RESNET_DATA__DATA_DIR": str(trained.parent.parent.parent / "data")}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    held_out = ExportResult.model_validate_json(exported["summary"].read_text()).archives[0].held_out
    assert result["images"] == held_out.images == 300 and result["calibration_images"] == 128
    assert result["int8"]["agreement"] == pytest.approx(held_out.top1_agreement)
    assert result["int8"]["drop_points"] == pytest.approx(held_out.accuracy_drop)
    assert result["weight_rounding"]["method"] == held_out.weight_rounding == "gptq"  # as the fixture exported
    parts = ["weights_only", "weights_only_nearest", "only_fc"]
    assert "only_layer1" not in result  # --stages was heard
    for name in ["int8", *parts]:
        entry = result[name]
        assert entry["flips"] == round((1 - entry["agreement"]) * 300) and entry["diff_error_std"] >= 0, name
    assert 0 <= result["margins"]["below_0.05"] <= result["margins"]["below_0.1"] <= 1


def _eager(checkpoint: Path, x: torch.Tensor) -> torch.Tensor:
    model, _ = load_model(checkpoint)
    with torch.inference_mode():
        return model.eval()(x)


def test_each_kind_reloads_with_its_plain_runtime_and_carries_the_metadata(trained: Path, exported) -> None:
    assert exported["onnx"].name == "best.onnx" and exported["aoti"].name == "best.aoti.pt2"
    _, meta = load_model(trained)
    x = torch.randn(7, 3, 32, 32)  # another batch size than the export's example (2) and check (5)
    expected = _eager(trained, x)
    # ONNX: onnx for the metadata, onnxruntime for the numbers, nothing of ours.
    proto = onnx.load(str(exported["onnx"]))
    data = json.loads({p.key: p.value for p in proto.metadata_props}["cifar_resnet"])
    assert data["class_names"] == meta.class_names and data["mean"] == list(meta.mean) and data["image_size"] == 32
    session = ort.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    out = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    assert (out - expected).abs().max() <= 1e-4 * max(1.0, float(expected.abs().max()))
    # AOTInductor: a zip with extra/cifar_resnet.json; torch alone runs it.
    with zipfile.ZipFile(exported["aoti"]) as z:
        (name,) = [n for n in z.namelist() if n.endswith("/extra/cifar_resnet.json")]
        data = json.loads(z.read(name))
    assert data["export_method"] == "aoti" and data["export_device"] == "cpu" and data["num_classes"] == 10
    runner = torch._inductor.aoti_load_package(str(exported["aoti"]))
    with torch.inference_mode():
        out = runner(x)
    assert (out - expected).abs().max() <= 1e-4 * max(1.0, float(expected.abs().max()))


@pytest.mark.numerics
def test_int8_is_scored_on_held_out_images_and_says_so(exported) -> None:
    result = ExportResult.model_validate_json(exported["summary"].read_text())
    (archive,) = result.archives
    h = archive.held_out
    assert archive.kind == "onnx" and archive.dtype == "int8" and exported["int8"].name == "best.int8.onnx"
    assert h.split == "val" and h.images == 300 and h.calibration_images == 128 and h.max_accuracy_drop == 3
    # GPTQ kept on the grid in nearly every output channel (54-127 of 8,522 fell back on cifar10-mini models).
    assert h.weight_rounding == "gptq" and 0 <= h.rows_to_nearest < 8522 // 20
    assert h.accuracy_drop == pytest.approx(h.fp32_top1 - h.int8_top1) and h.accuracy_drop <= 3
    assert h.top1_agreement >= 0.95 and archive.bytes < exported["onnx"].stat().st_size / 3  # int8 weights
    proto = onnx.load(str(exported["int8"]))
    data = json.loads({p.key: p.value for p in proto.metadata_props}["cifar_resnet"])
    assert data["int8_held_out"]["accuracy_drop"] == h.accuracy_drop and data["export_dtype"] == "int8"
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    # The counts behind the figures, and intervals around them that the figures lie in.
    assert h.flipped == round((1 - h.top1_agreement) * h.images)
    assert h.fp32_only_correct - h.int8_only_correct == round(h.accuracy_drop * h.images / 100)
    assert h.fp32_only_correct + h.int8_only_correct <= h.flipped  # a right answer that moved is a flip
    (a_low, a_high), (d_low, d_high) = h.top1_agreement_ci95, h.accuracy_drop_ci95
    assert a_low < h.top1_agreement <= a_high and d_low <= h.accuracy_drop <= d_high
    assert data["int8_held_out"]["top1_agreement_ci95"] == list(h.top1_agreement_ci95)
    with report.out.capture() as shown:
        report.render_export(result)
    assert f"{h.flipped} of 300 images changed their answer" in " ".join(shown.get().split())  # however it wraps


@pytest.mark.numerics
def test_eval_and_predict_of_every_kind_equal_the_checkpoint(cli, trained: Path, exported, tmp_path: Path) -> None:
    env = {"CIFAR_RESNET_DATA__DATA_DIR": str(trained.parent.parent.parent / "data")}
    reference = cli.json("eval", trained, env=env)
    # Images whose two best fp32 logits lie within the fp32 tolerance may swap under another runtime's
    # summation order; no other image may.
    model, meta = load_model(trained)
    data = load_dataset(
        "synthetic",
        trained.parent.parent.parent / "data",
        download=False,
        val_size=300,
        split_seed=0,
        synthetic_size=800,
    )
    x = preprocess(data.test.images, meta.mean, meta.std, meta.image_size)
    with torch.inference_mode():
        top2 = model.eval()(x).topk(2, dim=1).values
    undecided = int(((top2[:, 0] - top2[:, 1]) <= 1e-4 * max(1.0, float(top2.abs().max()))).sum())
    runs = [(exported["onnx"], []), (exported["aoti"], [])]
    if _has("openvino"):  # OpenVINO runs an fp32 file in fp32 (hint f32), so the same tolerance holds
        runs.append((exported["onnx"], ["--onnx-runtime", "openvino"]))
    for path, flags in runs:
        result = cli.json("eval", path, *flags, env=env)
        assert result["images"] == reference["images"]
        assert abs(result["top1"] - reference["top1"]) * result["images"] <= undecided + 1e-9, (path, flags)
    int8 = cli.json("eval", exported["int8"], env=env)  # int8: within its measured drop plus sampling noise
    assert int8["top1"] >= reference["top1"] - 0.05
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        from PIL import Image

        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(images / f"{i}.png")
    base = [p["top"][0]["index"] for p in cli.json("predict", trained, images)["predictions"]]
    for kind in ("onnx", "aoti"):
        assert [p["top"][0]["index"] for p in cli.json("predict", exported[kind], images)["predictions"]] == base


def test_an_archive_outside_its_run_folder_finds_the_data_it_was_trained_on(cli, trained: Path, exported) -> None:
    """export records the run's data folder in the archive, so eval needs no --data-dir (the exports folder
    holds no settings.json) and reads the same images as the checkpoint."""
    data_dir = str(trained.parent.parent.parent / "data")
    assert not (exported["onnx"].parent / "settings.json").exists()
    meta = json.loads({p.key: p.value for p in onnx.load(str(exported["onnx"])).metadata_props}["cifar_resnet"])
    assert meta["data"]["data_dir"] == data_dir
    with_flag = cli.json("eval", exported["onnx"], "--data-dir", data_dir)
    without = cli.json("eval", exported["onnx"])
    assert without["images"] == with_flag["images"] and without["top1"] == with_flag["top1"]
    # Synthetic data would be made again in the default folder had eval looked there.
    assert not (Path(os.environ["XDG_CACHE_HOME"]) / "cifar-resnet" / "data").exists()


@pytest.mark.numerics
def test_int8_is_scored_in_the_runtime_it_will_be_deployed_with(cli, trained: Path, tmp_path: Path) -> None:
    """--onnx-runtime openvino: the held-out score export stores is OpenVINO's, the one eval measures."""
    if not _has("openvino"):
        pytest.skip("the [openvino] extra is part of make test")
    env = {"CIFAR_RESNET_DATA__DATA_DIR": str(trained.parent.parent.parent / "data")}
    result = ExportResult.model_validate(
        cli.json(
            "export",
            trained,
            "--method",
            "onnx",
            "--dtype",
            "int8",
            "--calibration-images",
            "128",
            "--max-accuracy-drop",
            "3",
            "--onnx-runtime",
            "openvino",
            "--out",
            tmp_path,
            env=env,
        )
    )
    archive = result.archives[0]
    held_out = archive.held_out
    assert archive.runtime == held_out.runtime == "openvino"
    # The same images in the same batches of 256 as export scored them, in the same runtime.
    score = cli.json("eval", archive.path, "--split", "val", "--batch-size", "256", "--onnx-runtime", "openvino")
    assert score["images"] == held_out.images
    assert round(score["top1"] * score["images"]) == round(held_out.int8_top1 * held_out.images / 100)


def test_bench_times_every_archive_kind_with_each_runtime(cli, exported) -> None:
    common = ["--batch-sizes", "1,3", "--warmup", "0", "--iters", "3", "--peak-matmul", "256"]
    for kind, labels in (
        ("aoti", ["archive (aoti)"]),
        ("onnx", ["archive (onnx, onnxruntime)"]),
        ("int8", ["archive (onnx, onnxruntime)"]),
    ):
        result = BenchResult.model_validate(cli.json("bench", exported[kind], *common))
        variants = [t.variant for t in result.timings]
        if "openvino" in sys.modules or _has("openvino"):
            labels = [*labels, labels[0].replace("onnxruntime", "openvino")] if kind != "aoti" else labels
        assert variants == [v for v in labels for _ in (1, 3)], variants
        assert all(t.error is None and t.median_s > 0 and t.iters == 3 for t in result.timings)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_bench_runs_the_deployment_runtimes_beside_eager(cli) -> None:
    variants = "eager,onnxruntime" + (",openvino" if _has("openvino") else "")
    result = BenchResult.model_validate(
        cli.json(
            "bench",
            "--variants",
            variants,
            "--dtypes",
            "fp32,bf16,int8",
            "--batch-sizes",
            "1,3",
            "--warmup",
            "1",
            "--iters",
            "3",
            "--peak-matmul",
            "256",
        )
    )
    rows = {(t.variant, t.dtype, t.batch_size): t for t in result.timings}
    expected = {("eager", "fp32"), ("eager", "bf16"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")}
    if _has("openvino"):
        expected |= {("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")}
    assert {(v, d) for v, d, _ in rows} == expected
    for t in rows.values():
        assert t.error is None and t.correct, (t.variant, t.dtype, t.error, t.max_abs_diff, t.top1_agreement)
        assert (t.build_s is not None) == (t.variant != "eager")
    assert any("onnxruntime bf16" in w for w in result.warnings)  # skipped, and said why
    assert any("int8 rows are calibrated on random inputs" in w for w in result.warnings)


@pytest.mark.numerics
def test_a_destroyed_int8_model_is_refused_and_not_written(trained: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CIFAR_RESNET_DATA__DATA_DIR", str(trained.parent.parent.parent / "data"))
    settings = load_settings(
        None, {"export": {"methods": ["onnx"], "dtype": "int8", "out_dir": tmp_path, "calibration_images": 64}}
    )
    # Calibrated on images a thousand times too dark: every real activation saturates its int8 range, and not
    # even every layer in float rescues it (the additions stay int8): refused after that one file.
    with pytest.raises(export_module.VerificationError, match=r"with every convolution and linear layer in float"):
        export_model = export_module.export_model
        export_model(settings, trained, tamper_calibration=1e-3)
    assert list(tmp_path.iterdir()) == []


def _with_an_outlier_channel(checkpoint: Path, out: Path, scale: float = 1000.0) -> Path:
    """The same function, one activation channel ``scale`` times larger: channel 0 of layer3.0's first
    batch norm (weight and bias) times ``scale``, the next convolution's weights from it divided by it.
    ReLU commutes with a positive scale, so fp32 logits are unchanged, but one int8 range now spans that
    channel and rounds every other channel of the tensor to nothing: an outlier channel, as real models have."""
    model, meta = load_model(checkpoint)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["layer3.0.bn1.weight"][0] *= scale
    state["layer3.0.bn1.bias"][0] *= scale
    state["layer3.0.conv2.weight"][:, 0] /= scale
    save_weights(out, state, meta)
    inflated, _ = load_model(out)
    x = torch.randn(4, 3, meta.image_size, meta.image_size)
    with torch.no_grad():
        torch.testing.assert_close(inflated.eval()(x), model.eval()(x), atol=1e-4, rtol=1e-4)
    return out


@pytest.mark.numerics
def test_int8_past_its_budget_keeps_the_fewest_sensitive_layers_in_float(
    cli, trained: Path, tmp_path: Path, capsys
) -> None:
    """The outlier channel ruins the all-int8 file; the fallback finds the two convolutions around it (each
    quantized alone breaks the model), keeps them in float, ships the file within budget and says so."""
    checkpoint = _with_an_outlier_channel(trained, tmp_path / "outlier.safetensors")
    env = {"CIFAR_RESNET_DATA__DATA_DIR": str(trained.parent.parent.parent / "data")}
    args = [
        "export",
        checkpoint,
        "--method",
        "onnx",
        "--dtype",
        "int8",
        "--calibration-images",
        "128",
        "--max-accuracy-drop",
        "3",
        "--out",
        tmp_path / "out",
    ]
    r = cli(*args, "--json", env=env)
    assert r.exit_code == 0, r.stderr
    h = ExportResult.model_validate_json(r.stdout).archives[0].held_out
    f = h.fallback
    assert f is not None and f.all_int8_drop > 10  # without the fallback this file would be refused
    assert {"layer3.0.conv1", "layer3.0.conv2"} <= set(h.float_layers) and len(h.float_layers) <= 4
    assert h.float_layers == f.ranked[: len(h.float_layers)] and h.accuracy_drop == f.drops[-1] <= 3
    assert h.images + f.ranking_images == 300 and h.split == "val (report part)"
    assert f.ms["mixed"] < f.ms["fp32"] and set(f.ms) == {"fp32", "int8", "mixed"}
    proto = onnx.load(str(tmp_path / "out" / "outlier.int8.onnx"))
    stored = json.loads({p.key: p.value for p in proto.metadata_props}["cifar_resnet"])["int8_held_out"]
    assert stored["float_layers"] == h.float_layers and stored["fallback"]["ranked"] == f.ranked
    report.render_export(ExportResult.model_validate_json(r.stdout))  # the table a user sees, without a rerun
    text = squash(capsys.readouterr().out)
    assert "Fallback: every layer in int8 lost" in text and ", ".join(h.float_layers) in text
    # With the fallback off, refused as before and nothing is written (a model no number of float layers
    # rescues: test_a_destroyed_int8_model_is_refused_and_not_written).
    refused = cli(*args[:-1], tmp_path / "refused", "--max-float-layers", "0", env=env)
    assert refused.exit_code == 1 and "nothing was written" in refused.err and "--max-float-layers" in refused.err
    assert not (tmp_path / "refused" / "outlier.int8.onnx").exists()


def test_a_broken_onnx_export_is_caught_and_not_kept(cli, trained: Path, tmp_path: Path, monkeypatch) -> None:
    original = onnx_writer.onnx_proto

    def broken(deployed, example, metadata):
        with torch.no_grad():
            deployed.model.layer2[0].bn1.running_mean.add_(0.5)  # the file computes something else
        return original(deployed, example, metadata)

    monkeypatch.setattr(onnx_writer, "onnx_proto", broken)
    r = cli("export", trained, "--method", "onnx", "--out", tmp_path)
    assert r.exit_code == 1 and "differs from the eager model" in r.err and "nothing was written" in r.err
    assert list(tmp_path.iterdir()) == []


def test_damaged_archives_are_refused_in_one_line(cli, exported, tmp_path: Path) -> None:
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(exported["onnx"].read_bytes()[:100_000])
    bare = tmp_path / "bare.onnx"
    proto = onnx.load(str(exported["onnx"]))
    del proto.metadata_props[:]
    onnx.save(proto, str(bare))
    cut_pt2 = tmp_path / "cut.pt2"
    cut_pt2.write_bytes(exported["aoti"].read_bytes()[:1_000_000])
    for path, message in (
        (cut, "not a readable ONNX archive"),
        (bare, "has no metadata_props"),
        (cut_pt2, "not a readable"),
    ):
        for command in ("eval", "predict"):
            r = cli(command, path, *([tmp_path] if command == "predict" else []))
            assert r.exit_code == 1 and message in r.err and "Traceback" not in r.stderr, (path, command, r.err)


def test_a_missing_extra_is_one_line(cli, trained: Path, exported, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now raises ImportError
    r = cli("export", trained, "--method", "onnx", "--out", tmp_path)
    assert r.exit_code == 1 and "pip install 'cifar-resnet[onnx]'" in r.err and "Traceback" not in r.stderr
    assert len(r.err.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []
    assert "onnx" not in methods_for_all("fp32")[0] and "onnxscript" in methods_for_all("fp32")[1][-1]
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    r = cli("eval", exported["onnx"])
    assert r.exit_code == 1 and "pip install 'cifar-resnet[onnx]'" in r.err and "Traceback" not in r.stderr
    monkeypatch.setitem(sys.modules, "openvino", None)
    rows = cli.json(
        "bench",
        "--variants",
        "eager,openvino",
        "--batch-sizes",
        "1",
        "--iters",
        "3",
        "--warmup",
        "0",
        "--peak-matmul",
        "0",
    )["timings"]
    assert "cifar-resnet[openvino]" in rows[1]["error"]


def test_export_in_openvino_without_it_is_one_line(cli, trained: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    r = cli("export", trained, "--method", "onnx", "--dtype", "int8", "--onnx-runtime", "openvino", "--out", tmp_path)
    assert r.exit_code == 1 and "--onnx-runtime openvino needs openvino" in r.err and "Traceback" not in r.stderr
    assert "pip install 'cifar-resnet[openvino]'" in r.err and list(tmp_path.iterdir()) == []
    # Refused before any work: the (synthetic) data calibration needs was never made.
    assert not (Path(os.environ["XDG_CACHE_HOME"]) / "cifar-resnet" / "data").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "trace", "--dtype", "int8"], "int8 archives are ONNX files"),
        (["--method", "onnx", "--dtype", "bf16"], "ONNX archives are fp32 or int8"),
        (["--method", "onnx", "--channels-last"], "--channels-last applies to TorchScript and aoti"),
        (["--method", "tflite"], "'tflite' is not one of"),
        (["--method", "onnx", "--dtype", "int8", "--calibration-images", "0"], "calibration"),
        (["--method", "onnx", "--dtype", "int8", "--max-accuracy-drop", "-1"], "max-accuracy-drop"),
        (["--method", "onnx", "--dtype", "int8", "--weight-rounding", "adaround"], "'nearest', 'gptq'"),
        (["--method", "onnx", "--weight-rounding", "gptq"], "--weight-rounding only applies to int8 archives"),
    ],
)
def test_bad_export_input_is_one_line_and_exit_2(cli, trained: Path, tmp_path: Path, args, message) -> None:
    r = cli("export", trained, *args, "--out", tmp_path)
    assert r.exit_code == 2 and message in r.err and "Traceback" not in r.stderr, r.err
    assert list(tmp_path.iterdir()) == []


def test_int8_without_its_data_says_where_it_looked(cli, tmp_path: Path) -> None:
    ckpt = tmp_path / "w.safetensors"
    assert cli("port", "--weights", "none", "--dataset", "cifar10", "--out", ckpt).exit_code == 0
    r = cli(
        "export", ckpt, "--method", "onnx", "--dtype", "int8", "--out", tmp_path / "x", "--data-dir", tmp_path / "none"
    )
    assert r.exit_code == 1 and "cifar-10-batches-py" in r.err and "Traceback" not in r.stderr, r.err
    assert not (tmp_path / "x").exists() or list((tmp_path / "x").iterdir()) == []


@pytest.mark.skipif(not callable(getattr(torch.export.Dim, "DYNAMIC", None)), reason="this torch has no Dim hints")
def test_a_size_guard_in_the_graph_narrows_the_batch_range_instead_of_failing() -> None:
    """On CUDA, convolution's backend choice guards on the tensor sizes, and a named
    Dim(max=65536) was refused ("Constraints violated (batch)", H200). The same kind of guard here: the
    export must succeed, run batch 1 and another batch, and refuse a batch past the guard, not
    silently take the traced branch."""
    from cifar_resnet_cli.deploy.writers import _batch_dim

    class SizeGuarded(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.sum(dim=(1, 2, 3)) if x.numel() < 2**24 else x.mean(dim=(1, 2, 3))

    x = torch.ones(2, 3, 64, 64)  # 12,288 values per image: the guard holds up to batch 1,365
    with pytest.raises((AssertionError, RuntimeError)):  # the named Dim: refused (messages differ by version)
        torch.export.export(SizeGuarded(), (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch", max=65_536)}})
    program = torch.export.export(SizeGuarded(), (x,), dynamic_shapes=_batch_dim()).module()
    assert program(torch.ones(1, 3, 64, 64)).tolist() == [12_288.0]
    assert program(torch.ones(5, 3, 64, 64)).shape == (5,)
    with pytest.raises((AssertionError, RuntimeError), match=r"[Gg]uard"):
        program(torch.ones(2_000, 3, 64, 64))


CRASH = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"  # what torch's CUDA loader did on an H200


def _probe_on_cpu(monkeypatch, code: str | None = None) -> None:
    """Probe CPU packages as CUDA ones are, with the real loader or with one that crashes like it."""
    monkeypatch.setattr(archives_module, "PROBED_DEVICE_TYPES", {"cpu"})
    if code is not None:
        monkeypatch.setattr(archives_module, "_AOTI_PROBE", code)


def test_a_loader_that_crashes_is_caught_in_a_child_process(cli, trained: Path, exported, monkeypatch) -> None:
    """torch 2.11's AOTInductor loader killed the process with SIGSEGV on every CUDA package on an H200: a
    package is first loaded in a child process, so the crash is one line, not a dead process."""
    expected = cli.json("eval", trained)["top1"]
    _probe_on_cpu(monkeypatch)  # the real loader in the child: a good package passes
    assert cli.json("eval", exported["aoti"])["top1"] == expected
    _probe_on_cpu(monkeypatch, CRASH)
    for command in ("eval", "predict"):
        r = cli(command, exported["aoti"], *([exported["aoti"].parent] if command == "predict" else []))
        assert r.exit_code == 1 and "Traceback" not in r.stderr, r.stderr
        assert "AOTInductor loader crashed (SIGSEGV)" in r.err and "separate process" in r.err, r.err
    monkeypatch.setattr(archives_module, "PROBE_TIMEOUT_S", 1)
    _probe_on_cpu(monkeypatch, "import time; time.sleep(30)")
    r = cli("eval", exported["aoti"])
    assert r.exit_code == 1 and "did not finish in 1 s" in r.err, r.err


def test_export_all_leaves_out_a_package_whose_loader_crashes(
    cli, trained: Path, exported, tmp_path: Path, monkeypatch
) -> None:
    """--method all writes every kind that can be made here, and says which it left out and why; a named
    --method aoti fails, and writes nothing."""
    # The compile is not the point: the package is the fixture's, and the crash is the probe's.
    monkeypatch.setattr(
        aoti_writer, "write_aoti", lambda deployed, example, path, metadata: shutil.copyfile(exported["aoti"], path)
    )
    _probe_on_cpu(monkeypatch, CRASH)
    result = ExportResult.model_validate(cli.json("export", trained, "--method", "all", "--out", tmp_path / "all"))
    assert [a.method for a in result.archives] == ["trace", "script", "frozen", "onnx"]
    assert any(w.startswith("no aoti archive: torch") and "crashed (SIGSEGV)" in w for w in result.warnings)
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == sorted(Path(a.path).name for a in result.archives)
    r = cli("export", trained, "--method", "aoti", "--out", tmp_path / "one")
    assert r.exit_code == 1 and "crashed (SIGSEGV)" in r.err and list((tmp_path / "one").iterdir()) == []


def test_bench_compiles_no_more_packages_after_the_loader_crashed(cli, exported, monkeypatch) -> None:
    built = []
    monkeypatch.setattr(
        runtimes_module,
        "write_aoti",
        lambda deployed, example, path, metadata: built.append(shutil.copyfile(exported["aoti"], path)),
    )
    _probe_on_cpu(monkeypatch, CRASH)
    rows = cli.json(
        "bench",
        "--variants",
        "eager,aoti",
        "--dtypes",
        "fp32,bf16",
        "--batch-sizes",
        "1",
        "--iters",
        "3",
        "--warmup",
        "0",
        "--peak-matmul",
        "0",
    )["timings"]
    errors = [t["error"] for t in rows if t["variant"] == "aoti"]
    assert len(built) == 1 and len(errors) == 2 and all("crashed (SIGSEGV)" in e for e in errors), errors
    assert "not built" in errors[1] and all(t["error"] is None for t in rows if t["variant"] == "eager")
