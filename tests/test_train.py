from __future__ import annotations

import csv
import itertools
import json
import math
import signal
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from conftest import assert_same_run
from safetensors.torch import load_file

from cifar_resnet_cli.core.intervals import proportion_interval
from cifar_resnet_cli.core.settings import load_settings
from cifar_resnet_cli.data import presets as presets_module
from cifar_resnet_cli.data.augment import preprocess
from cifar_resnet_cli.data.loading import load_dataset
from cifar_resnet_cli.measure.evaluate import EvalResult, ranked, score_logits
from cifar_resnet_cli.model.resnet import resnet34
from cifar_resnet_cli.model.weights import load_model
from cifar_resnet_cli.training import train as train_module
from cifar_resnet_cli.training.train import (
    NullProgress,
    TrainingInterrupted,
    TrainResult,
    lr_factor,
    param_groups,
    train,
)

# Small and fast on a 2-core CPU: the imagenet stem at 32 px, a few hundred synthetic images.
TINY = [
    "--dataset",
    "synthetic",
    "--synthetic-size",
    "600",
    "--val-size",
    "200",
    "--batch-size",
    "50",
    "--init",
    "none",
    "--epochs",
    "2",
]


def _settings(**sections):
    base = {
        "data": {"dataset": "synthetic", "synthetic_size": 600, "val_size": 200},
        "train": {"init": "none", "epochs": 2, "batch_size": 50},
    }
    for key, value in sections.items():
        base.setdefault(key, {}).update(value)
    return load_settings(None, base)


@pytest.mark.numerics
def test_short_fine_tune_learns_synthetic(cli, tmp_path: Path) -> None:
    r = TrainResult.model_validate(
        cli.json(
            "train",
            "--dataset",
            "synthetic",
            "--synthetic-size",
            "2000",
            "--val-size",
            "500",
            "--batch-size",
            "64",
            "--init",
            "none",
            "--epochs",
            "2",
            "--amp",
            "bf16",
            "--channels-last",
        )
    )
    # Measured (docs/numerics.md): 1.000 in bf16 and fp32, natively (AMX) and with oneDNN held to AVX-512
    # without bf16 or to AVX2; before residual branches started at zero, 0.40 to 0.91 by the CPU's rounding.
    assert r.history[0].train_loss < math.log(10), r.history  # starts below chance's loss, not diverging
    assert r.best_val_top1 >= 0.90, r.history
    assert r.test_top1 >= 0.85 and r.synthetic and r.mode == "fine-tuning"
    run = Path(r.run_dir)
    assert run == Path("runs/train")
    assert (r.best_checkpoint, r.last_checkpoint) == ("runs/train/best.safetensors", "runs/train/last.safetensors")
    assert {p.name for p in run.iterdir()} == {
        "settings.json",
        "metrics.jsonl",
        "metrics.csv",
        "last.safetensors",
        "last.state.safetensors",
        "best.safetensors",
        "summary.json",
        "curves.png",
        "tensorboard",
    }
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    assert json.loads((run / "settings.json").read_text())["train"]["amp"] == "bf16"
    assert TrainResult.model_validate_json((run / "summary.json").read_text()).test_top1 == r.test_top1
    _, meta = load_model(run / "best.safetensors")
    assert meta.trained_epochs == r.best_epoch and meta.dataset == "synthetic" and meta.val_size == 500


def test_without_a_terminal_progress_is_plain_lines_and_metrics_csv_equals_jsonl(cli) -> None:
    r = cli("train", *TINY, "--limit-batches", "4", "--log-interval", "3")
    assert r.exit_code == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if " step " in line]
    assert [line.split(" loss ")[0] for line in lines] == [
        "epoch 1/2 step 3/4",
        "epoch 1/2 step 4/4",
        "epoch 2/2 step 3/4",
        "epoch 2/2 step 4/4",
    ]
    assert all(" top-1 " in line and " lr " in line and line.endswith(" img/s") for line in lines)
    assert "\x1b" not in r.stderr  # no control codes in a log file
    assert "Training run runs/train" in r.stdout and "…" not in r.stdout  # 80 columns: no number cut short
    rows = [json.loads(x) for x in Path("runs/train/metrics.jsonl").read_text().splitlines()]
    with open("runs/train/metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) == 2 and list(table[0]) == list(rows[0])
    assert table == [{k: "" if v is None else str(v) for k, v in row.items()} for row in rows]


def test_eval_and_ablate_of_a_run_checkpoint_use_the_runs_data_folder(cli, tmp_path: Path) -> None:
    data_dir = tmp_path / "elsewhere"
    assert cli("train", *TINY, "--epochs", "1", "--limit-batches", "1", "--data-dir", data_dir).exit_code == 0
    default = tmp_path / "cache" / "cifar-resnet" / "data"
    assert data_dir.is_dir() and not default.exists()
    r = cli.json("eval", "runs/train/best.safetensors")
    assert r["images"] == 120 and not default.exists()  # read from the run's --data-dir
    r = cli("ablate", "runs/train/best.safetensors", "--limit", "10")
    assert r.exit_code == 0 and not default.exists()
    r = cli("eval", "runs/train/best.safetensors", "--data-dir", tmp_path / "other", "--no-download", "--json")
    assert r.exit_code == 0 and (tmp_path / "other").is_dir()  # a flag still wins (synthetic is generated)


def test_tensorboard_holds_each_epoch_once_after_a_resume(cli) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert cli("train", *TINY, "--epochs", "1", "--limit-batches", "1").exit_code == 0
    assert cli("train", "--resume", "runs/train", "--epochs", "2").exit_code == 0
    events = EventAccumulator("runs/train/tensorboard")
    events.Reload()
    rows = [json.loads(x) for x in Path("runs/train/metrics.jsonl").read_text().splitlines()]
    for name, key in (("val/top1", "val_top1"), ("train/loss", "train_loss"), ("lr", "lr")):
        scalars = events.Scalars(name)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([r[key] for r in rows], rel=1e-6)  # stored as float32
    assert (
        cli("train", *TINY, "--epochs", "1", "--limit-batches", "1", "--no-tensorboard", "--name", "off").exit_code == 0
    )
    assert not Path("runs/off/tensorboard").exists()


def test_eval_breaks_exact_ties_like_argmax() -> None:
    """int8 logits tie exactly on about 1% of images: top-1 is the first of the tied classes (argmax's
    documented rule, which export's held-out score uses), whatever order topk returns them in."""
    logits = torch.zeros(64, 10)
    logits[:, 7] = logits[:, 3] = 1.0  # classes 3 and 7 tie on every image
    scores = score_logits(logits, torch.full((64,), 3), 10)
    assert scores.top1 == 64 and scores.confusion[3, 3] == 64
    assert score_logits(logits, torch.full((64,), 7), 10).top1 == 0


def test_ranking_puts_tied_classes_in_class_order() -> None:
    """predict's list and eval's top-5 use the same rule as top-1: among equal scores, the lower class
    first (``topk`` gives no such order), so predict names the class eval counts."""
    scores = torch.tensor([[0.1, 0.5, 0.2, 0.5, 0.0, 0.5, 0.2], [0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]]).repeat(32, 1)
    values, classes = ranked(scores, 5)
    assert classes[0].tolist() == [1, 3, 5, 2, 6] and classes[1].tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(classes[:, 0], scores.argmax(1)) and torch.equal(values, scores.gather(1, classes))


def test_eval_equals_an_independent_computation(cli, tmp_path: Path) -> None:
    r = cli.json("train", *TINY, "--epochs", "1")
    ckpt = Path(r["run_dir"]) / "best.safetensors"
    result = EvalResult.model_validate(cli.json("eval", ckpt, "--confusion", tmp_path / "c.csv"))

    model, meta = load_model(ckpt)
    model.eval()
    data = load_dataset(
        "synthetic",
        tmp_path / "cache" / "cifar-resnet" / "data",
        download=False,
        val_size=200,
        split_seed=0,
        synthetic_size=600,
    )
    x = data.test.images.float() / 255
    x = (x - torch.tensor(meta.mean).view(1, 3, 1, 1)) / torch.tensor(meta.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        logits = model(x)
    correct = int((logits.argmax(1) == data.test.labels).sum())
    assert result.images == len(data.test) == 120
    assert result.top1 == correct / len(data.test)
    assert result.top1_ci95 == proportion_interval(correct, 120)  # 120 images: several points either way
    assert sum(c.correct for c in result.per_class) == correct
    assert sum(map(sum, result.confusion)) == 120
    rows = (tmp_path / "c.csv").read_text().splitlines()
    assert len(rows) == 11 and rows[1].startswith("synthetic_0,")
    # train's own test figure is the same measurement
    assert r["test_top1"] == result.top1


def test_cached_and_uncached_feature_extraction_agree(tmp_path: Path) -> None:
    common = {"freeze_backbone": True, "augment": False, "epochs": 2, "lr": 0.1, "limit_batches": 4}
    a = train(_settings(train={**common, "cache_features": True, "name": "cached"}))
    b = train(_settings(train={**common, "cache_features": False, "name": "uncached"}))
    assert a.feature_cache and not b.feature_cache and "faster" in a.feature_cache_note
    wa = load_file(Path(a.run_dir) / "last.safetensors")
    wb = load_file(Path(b.run_dir) / "last.safetensors")
    torch.manual_seed(0)  # --init none: the head both runs started from
    start = {f"fc.{k}": v for k, v in resnet34(num_classes=10).fc.state_dict().items()}
    # The cache computes features in batches of 512, the uncached run in its training batches of 50:
    # CPU kernels may round differently at another batch size, by about 1e-6 of a feature. Eight SGD
    # steps on the head carry that into its update in proportion, so the two updates may differ by
    # about 1e-6 of their size; we allow 1e-4 of it. Any real difference (other features, another
    # BatchNorm state, augmentation) moves the head by a large fraction of the update.
    for key in ("fc.weight", "fc.bias"):
        update = float((wa[key] - start[key]).norm())
        assert update > 0.01
        assert float((wa[key] - wb[key]).norm()) <= 1e-4 * update, key
    assert a.history[-1].val_top1 == pytest.approx(b.history[-1].val_top1, abs=0.01)


def test_frozen_backbone_statistics_do_not_move(cli, tmp_path: Path) -> None:
    init = tmp_path / "init.safetensors"
    assert cli("port", "--weights", "none", "--dataset", "synthetic", "--out", init).exit_code == 0
    r = cli.json("train", *TINY, "--init", init, "--freeze-backbone", "--augment", "--epochs", "1")
    before, after = load_file(init), load_file(Path(r["run_dir"]) / "last.safetensors")
    backbone = [k for k in before if not k.startswith("fc.")]
    assert any("running_mean" in k for k in backbone)
    assert all(torch.equal(before[k], after[k]) for k in backbone)
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    assert r["mode"] == "feature extraction" and not r["feature_cache"]  # augmentation: no cache


class _InterruptAt:
    """A progress sink that presses Ctrl-C (a real SIGINT) at one step."""

    def __init__(self, epoch: int, step: int) -> None:
        self.at = (epoch, step)

    def step(self, *, epoch: int, step: int, **_) -> None:
        if (epoch, step) == self.at:
            signal.raise_signal(signal.SIGINT)

    def __getattr__(self, name):
        return getattr(NullProgress(), name)


def test_resume_after_ctrl_c_is_bit_identical(tmp_path: Path) -> None:
    kw = {"augment": True, "cutmix": 1.0, "mixup": 0.2, "limit_batches": 3, "label_smoothing": 0.1}
    straight = train(_settings(train={**kw, "name": "straight"}))

    with pytest.raises(TrainingInterrupted, match="resume with: cifar-resnet train --resume"):
        train(_settings(train={**kw, "name": "split"}), _InterruptAt(epoch=1, step=2))
    run = Path("runs/split")
    assert load_model(run / "last.safetensors")[1].trained_steps == 2
    resumed = train(train_module.settings_for_resume(run, {}), resume=run)
    assert resumed.resumed_from_epoch == 0

    assert_same_run(Path(straight.run_dir), run)  # weights, optimiser state, every metrics row
    assert [h.train_samples for h in resumed.history] == [150, 150]


def test_resume_to_more_epochs_equals_straight_with_constant_lr(cli) -> None:
    common = [*TINY, "--schedule", "constant", "--limit-batches", "2"]
    straight = cli.json(*["train", *common, "--name", "straight"])
    assert cli("train", *common, "--epochs", "1", "--name", "short").exit_code == 0
    resumed = cli.json("train", "--resume", "runs/short", "--epochs", "2")
    assert resumed["resumed_from_epoch"] == 1 and len(resumed["history"]) == 2
    a = load_file(Path(straight["run_dir"]) / "last.safetensors")
    b = load_file(Path("runs/short/last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_settings(cli) -> None:
    assert cli("train", *TINY, "--epochs", "1", "--limit-batches", "1").exit_code == 0
    r = cli("train", "--resume", "runs/train", "--dataset", "cifar10", "--epochs", "2")
    assert r.exit_code == 1 and "data.dataset" in r.err and "--epochs" in r.err
    r = cli("train", "--resume", "runs/train")
    assert r.exit_code == 1 and "finished 1 epochs" in r.err
    r = cli("train", "--resume", "runs/missing", "--epochs", "3")
    assert r.exit_code == 1 and "settings.json is missing" in r.err


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(cli, monkeypatch) -> None:
    calls = {"n": 0}

    def poisoned(images, *args, **kwargs):
        calls["n"] += 1
        out = preprocess(images, *args, **kwargs)
        return out * float("nan") if calls["n"] > 3 else out

    monkeypatch.setattr(presets_module, "preprocess", poisoned)  # what each training batch goes through
    r = cli("train", *TINY, "--limit-batches", "3", "--no-cache-features")
    assert r.exit_code == 1 and "loss became nan at epoch 2" in r.err
    assert "last good checkpoint: runs/train/last.safetensors (epoch 1)" in r.err
    assert load_model(Path("runs/train/last.safetensors"))[1].trained_epochs == 1


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--batch-size", "0"], 2, "--batch-size = 0"),
        (["--lr", "-1"], 2, "--lr = -1.0"),
        (["--milestones", "3,2", "--schedule", "multistep"], 2, "increasing"),
        (["--milestones", "2", "--schedule", "cosine"], 2, "multistep only"),
        (["--amp", "fp16"], 1, "needs CUDA"),
        (["--val-size", "600"], 1, "leaves no training images"),
    ],
)
def test_bad_train_options_write_nothing(cli, args: list[str], code: int, message: str) -> None:
    r = cli("train", *TINY, *args)
    assert r.exit_code == code, r.stderr
    assert message in r.err
    assert not Path("runs").exists() or not any(Path("runs").iterdir())


def test_missing_and_corrupted_data(cli, tmp_path: Path, cifar10_dir: Path) -> None:
    r = cli("train", "--dataset", "cifar10", "--no-download", "--data-dir", tmp_path / "empty", "--init", "none")
    assert r.exit_code == 1 and "cifar-10-batches-py" in r.err and "data_batch_1" in r.err
    batch = cifar10_dir / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(b"\x80\x02}q\x00")
    r = cli("train", "--dataset", "cifar10", "--data-dir", cifar10_dir, "--init", "none", "--val-size", "10")
    assert r.exit_code == 1 and "test_batch is corrupted" in r.err
    assert not Path("runs").exists()


def test_offline_imagenet_init_names_the_alternatives(cli, monkeypatch) -> None:
    from urllib.error import URLError

    def offline(*_a, **_k):
        raise URLError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    r = cli("train", "--dataset", "synthetic", "--synthetic-size", "600", "--val-size", "100", "--freeze-backbone")
    assert r.exit_code == 1
    assert "resnet34-b627a593.pth" in r.err and "--init FILE.safetensors" in r.err and "--init none" in r.err
    assert len(r.stderr.strip().splitlines()) == 1
    assert not Path("runs").exists()


def test_init_with_another_head_keeps_the_backbone_and_makes_a_new_head(cli, tmp_path: Path) -> None:
    ckpt = tmp_path / "c100.safetensors"
    assert cli("port", "--weights", "none", "--dataset", "cifar100", "--out", ckpt).exit_code == 0
    settings = _settings(train={"init": str(ckpt), "seed": 3})
    data = load_dataset("synthetic", Path("data"), download=False, val_size=200, split_seed=0, synthetic_size=600)
    init = train_module.initial_model(settings, data)
    source = load_file(ckpt)
    mine = init.model.state_dict()
    assert all(torch.equal(mine[k], source[k]) for k in source if not k.startswith("fc."))
    assert mine["fc.weight"].shape == (10, 512) and "new 10-class head (seed 3)" in init.note
    assert init.meta.class_names == list(data.classes) and init.meta.num_classes == 10
    again = train_module.initial_model(settings, data).model.state_dict()["fc.weight"]
    assert torch.equal(again, mine["fc.weight"])  # the new head is seeded
    run = cli.json("train", *TINY, "--epochs", "1", "--init", ckpt)
    assert any("its backbone is used with a new 10-class head" in w for w in run["warnings"])


def test_checkpoint_of_the_wrong_class_count(cli, tmp_path: Path) -> None:
    ckpt = tmp_path / "c100.safetensors"
    assert cli("port", "--weights", "none", "--dataset", "cifar100", "--out", ckpt).exit_code == 0
    r = cli("eval", ckpt, "--dataset", "cifar10")
    assert r.exit_code == 1 and "100-class head" in r.err and "cifar10 has 10 classes" in r.err


def test_run_directories_are_numbered(cli) -> None:
    for name in ("exp", "exp", "exp1", "exp1"):
        assert cli("train", *TINY, "--epochs", "1", "--limit-batches", "1", "--name", name).exit_code == 0
    assert sorted(p.name for p in Path("runs").iterdir()) == ["exp", "exp1", "exp1-2", "exp2"]


def test_lr_schedules() -> None:
    kw = {"total": 100, "steps_per_epoch": 10, "step_size": 3, "milestones": [5, 8], "gamma": 0.1}
    cos = [lr_factor(s, warmup=10, schedule="cosine", **kw) for s in range(100)]
    assert cos[0] == pytest.approx(0.1) and cos[9] == pytest.approx(1.0) and cos[-1] < 0.01
    assert all(a >= b for a, b in itertools.pairwise(cos[9:]))
    one = [lr_factor(s, warmup=0, schedule="onecycle", **kw) for s in range(100)]
    assert one[0] == pytest.approx(1 / 25) and max(one) == pytest.approx(1.0, abs=0.01) and one.index(max(one)) == 30
    assert lr_factor(29, warmup=0, schedule="step", **kw) == 1.0
    assert lr_factor(30, warmup=0, schedule="step", **kw) == pytest.approx(0.1)
    assert lr_factor(60, warmup=0, schedule="step", **kw) == pytest.approx(0.01)
    assert [lr_factor(s, warmup=0, schedule="multistep", **kw) for s in (49, 50, 80)] == pytest.approx([1, 0.1, 0.01])
    assert lr_factor(99, warmup=0, schedule="constant", **kw) == 1.0


def test_no_weight_decay_on_batchnorm_and_bias() -> None:
    from cifar_resnet_cli.model.resnet import resnet34

    model = resnet34(num_classes=10)
    groups = param_groups(model, _settings(train={"backbone_lr_scale": 0.1, "lr": 0.2, "weight_decay": 1e-3}))
    by_name = {g["name"]: g for g in groups}
    assert by_name["backbone"]["weight_decay"] == 1e-3 and by_name["backbone-no-decay"]["weight_decay"] == 0
    assert by_name["head-no-decay"]["weight_decay"] == 0 and by_name["head"]["lr"] == 0.2
    assert by_name["backbone"]["lr"] == pytest.approx(0.02)
    assert all(p.ndim <= 1 for p in by_name["backbone-no-decay"]["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_a_step_the_fp16_scaler_skips_changes_nothing(optimizer: str) -> None:
    """fp16 training overflows in its first steps by design, and GradScaler skips those steps. torch's
    fused SGD advanced its momentum on them anyway (nan by step 5 on an H200): make_optimizer must
    give an optimiser whose skipped step leaves weights and state as they were, and whose next
    finite step moves the weights by a finite amount. The CPU has GradScaler too, so this runs here."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(OrderedDict(body=torch.nn.Linear(4, 4), fc=torch.nn.Linear(4, 3)))
    settings = _settings(train={"optimizer": optimizer, "amp": "fp16", "lr": 0.1, "momentum": 0.9})
    opt = train_module.make_optimizer(model, settings)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scaler.scale(model(torch.ones(2, 4)).square().sum()).backward()
    for p in model.parameters():
        p.grad[0] = float("inf")  # as if this backward pass had overflowed fp16
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(torch.is_tensor(x) and not torch.isfinite(x).all() for st in opt.state.values() for x in st.values())
    opt.zero_grad(set_to_none=True)
    scaler.scale(model(torch.ones(2, 4)).square().sum()).backward()
    scaler.step(opt)
    scaler.update()
    moved = max(float((before[k] - v).abs().max()) for k, v in model.state_dict().items())
    assert 0 < moved < 10
    # Exactly the update of an optimiser that never saw the skipped step (no scaler, nothing skipped;
    # the scale is a power of two, so scaling and unscaling the gradients is exact).
    reference = torch.nn.Sequential(OrderedDict(body=torch.nn.Linear(4, 4), fc=torch.nn.Linear(4, 3)))
    reference.load_state_dict(before)
    off = train_module.make_optimizer(reference, _settings(train={**settings.train.model_dump(), "amp": "off"}))
    reference(torch.ones(2, 4)).square().sum().backward()
    off.step()
    for k, v in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=1e-6, atol=1e-7)


class _Losses(NullProgress):
    def __init__(self) -> None:
        self.means: list[float] = []

    def step(self, *, loss: float, **_) -> None:
        self.means.append(loss)


@pytest.mark.slow
@pytest.mark.numerics
def test_compiled_training_steps_equal_eager_within_float_tolerance(tmp_path: Path, monkeypatch) -> None:
    """``--compile`` (torch.compile of the model, Inductor's C++ kernels here) trains the same model.

    The forward pass agrees with eager to ~1e-6 relative (fp32 reductions reordered): the first
    loss within 1e-5. The backward agrees less closely: with Inductor's decompositions (the same
    under ``backend="aot_eager_decomp_partition"``, so not its generated code) this deep, randomly
    initialised network's gradients are up to about 1.1% away from eager's (BatchNorm parameters;
    measured on torch 2.14; eager fp32 is itself 0.6% from fp64 at conv1): one step's update within
    3% of its size. A randomly initialised ResNet34 is chaotic over steps (a 1% change in one step
    becomes tens of percent of a BatchNorm weight's update two steps later), so over three steps only
    the mean loss is compared (measured 0.5% apart; allowed 2%). A lost step, another learning rate,
    another augmentation or a skipped BatchNorm update moves the update by far more than 3%.
    """
    compiled_modules = []

    def spy(module, *args, **kwargs):
        compiled_modules.append(module)
        return real_compile(module, *args, **kwargs)

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", spy)
    one = {"epochs": 1, "limit_batches": 1, "amp": "off", "lr": 0.001}
    le, lc = _Losses(), _Losses()
    eager = train(_settings(train={**one, "name": "eager"}), le)
    compiled = train(_settings(train={**one, "compile": True, "name": "compiled"}), lc)
    assert len(compiled_modules) == 1 and isinstance(compiled_modules[0], torch.nn.Module)  # the flag did something
    assert lc.means[0] == pytest.approx(le.means[0], rel=1e-5)
    we = load_file(Path(eager.run_dir) / "last.safetensors")
    wc = load_file(Path(compiled.run_dir) / "last.safetensors")
    torch.manual_seed(0)  # --init none, seed 0: the weights both runs started from
    start = resnet34(num_classes=10, zero_init_residual=True).state_dict()
    # One step from residual branches that start at zero moves their last BatchNorm, not the convolutions
    # before it (their gradient passes through that zero); the stem, the shortcuts and fc move.
    for key in (
        "conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer3.1.bn2.weight",
        "layer4.2.bn2.weight",
        "fc.weight",
    ):
        update = float((we[key] - start[key].float()).norm())
        assert update > 0
        assert float((wc[key] - we[key]).norm()) <= 0.03 * update, key
    three = {**one, "limit_batches": 3}
    eager3 = train(_settings(train={**three, "name": "eager3"}))
    compiled3 = train(_settings(train={**three, "compile": True, "name": "compiled3"}))
    assert compiled3.history[0].train_loss == pytest.approx(eager3.history[0].train_loss, rel=2e-2)


def test_restored_optimizer_state_takes_the_parameters_layout() -> None:
    """A channels-last weight's momentum buffer comes back from the checkpoint contiguous (NCHW);
    torch's fused SGD would pair the wrong elements with it. Restoring gives it the weight's layout,
    so the fused step equals the per-tensor one (which honours strides)."""
    from cifar_resnet_cli.training.checkpoint import _match_layout

    torch.manual_seed(0)
    grad = torch.randn(8, 4, 3, 3).to(memory_format=torch.channels_last)
    buf = torch.randn(8, 4, 3, 3)  # as read back from safetensors: contiguous
    results = []
    for fused in (False, True):
        w = torch.nn.Parameter(torch.ones(8, 4, 3, 3).to(memory_format=torch.channels_last))
        w.grad = grad.clone()
        opt = torch.optim.SGD([w], lr=0.1, momentum=0.9, fused=fused)
        opt.state[w]["momentum_buffer"] = buf.clone()
        _match_layout(opt.state[w], w)
        assert opt.state[w]["momentum_buffer"].stride() == w.stride()
        opt.step()
        results.append(w.detach().clone())
    assert torch.equal(results[0], results[1])
