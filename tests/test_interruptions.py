"""Runs that survive: signals, kill -9, failures between the halves of a checkpoint, divergence.

Real signals and kills go to a real `cifar-resnet train` process; the comparison is always with an
uninterrupted run made the same way (a subprocess on this machine), and it is exact: weights,
optimiser state and every metrics row but the timing fields.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import assert_same_run, squash

from cifar_resnet_cli.core.errors import OutputError
from cifar_resnet_cli.model.weights import load_model
from cifar_resnet_cli.training import checkpoint as checkpoint_module
from cifar_resnet_cli.training import rundir
from cifar_resnet_cli.training import train as train_module
from cifar_resnet_cli.training.checkpoint import read_generation

# 4 steps an epoch, 2 epochs, a checkpoint every 2 steps; augmentation and CutMix on, so that an
# exact resume needs the right data order and the right random draws too.
RUN = [
    "train",
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
    "--limit-batches",
    "4",
    "--cutmix",
    "1.0",
    "--label-smoothing",
    "0.1",
]
EVERY_2 = ["--checkpoint-every", "2"]


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIFAR_RESNET_")}
    env.update(TORCH_HOME=str(root / "torch-home"), XDG_CACHE_HOME=str(root / "cache"), PYTHONUNBUFFERED="1")
    return env


def _start(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cifar_resnet_cli", *args],
        cwd=root,
        env=_env(root),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120, poll: float = 0.002):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) first: {proc.stderr.read()}")
        time.sleep(poll)
    raise AssertionError("timed out")


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run, made the same way as the interrupted ones, but with checkpoints at epoch
    ends only: saving inside an epoch must not change the result either."""
    root = tmp_path_factory.mktemp("reference")
    code, err = _finish(_start(root, *RUN, "--checkpoint-every", "0", "--name", "straight"))
    assert code == 0, err
    return root / "runs" / "straight"


def _resume(root: Path, run: Path) -> None:
    code, err = _finish(_start(root, "train", "--resume", str(run.relative_to(root))))
    assert code == 0, err


def test_sigterm_mid_epoch_saves_and_the_resume_is_exact(reference: Path, tmp_path: Path) -> None:
    """What batch schedulers and `docker stop` send. (SIGINT, Ctrl-C, is tested in test_train.py.)"""
    run = tmp_path / "runs" / "signalled"
    proc = _start(tmp_path, *RUN, *EVERY_2, "--name", "signalled")
    _wait_for(lambda: (run / rundir.LAST_STATE).is_file(), proc)  # the first checkpoint: step 2 is done
    proc.send_signal(signal.SIGTERM)  # normally lands during step 3 (a slow machine may reach step 4)
    returncode, err = _finish(proc)
    assert returncode == 143, err
    err = squash(err)
    assert "SIGTERM: saving a resumable state" in err and "Error: SIGTERM: stopped" in err
    assert "resume with: cifar-resnet train --resume" in err and "Traceback" not in err
    stopped = read_generation(run).progress
    if stopped.step_in_epoch:  # inside epoch 1: the partial sums of the epoch are in the checkpoint
        assert stopped.epoch == 0 and stopped.partial["samples"] == 50 * stopped.step_in_epoch
        assert f"stopped at epoch 1, step {stopped.step_in_epoch}/4" in err
    _resume(tmp_path, run)
    assert_same_run(reference, run)
    assert [r["train_samples"] for r in rundir.read_jsonl(run / rundir.METRICS)] == [200, 200]


def test_kill_9_inside_the_first_epoch_then_resume(reference: Path, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "killed"
    proc = _start(tmp_path, *RUN, *EVERY_2, "--name", "killed")
    _wait_for(lambda: (run / rundir.LAST_STATE).is_file(), proc)  # step 2's checkpoint: inside epoch 1
    proc.kill()
    _finish(proc)
    assert read_generation(run).progress.global_step < 8  # killed with work left, a checkpoint on disk
    _resume(tmp_path, run)
    assert_same_run(reference, run)


def test_kill_9_in_the_middle_of_a_save(reference: Path, tmp_path: Path) -> None:
    """Kill while the checkpoint's temporary file is being written (seen on disk, not yet renamed).
    A kill that arrives just after the rename misses; then the run is resumed and killed again."""
    run = tmp_path / "runs" / "torn"
    proc = _start(tmp_path, *RUN, *EVERY_2, "--name", "torn")
    for _attempt in range(3):
        _wait_for(lambda: (run / rundir.LAST_STATE).is_file(), proc)  # so that the save replaces one
        temporary = _wait_for(lambda: list(run.glob(".last.state.safetensors.*.tmp")), proc, poll=0.0005)
        proc.kill()
        _finish(proc)
        if any(p.exists() for p in temporary):
            break
        proc = _start(tmp_path, "train", "--resume", str(run.relative_to(tmp_path)))
    else:
        pytest.fail("three kills in a row missed the save they aimed at")
    read_generation(run)  # the previous generation is intact
    _resume(tmp_path, run)  # and removes the torn temporary file
    assert_same_run(reference, run)


# ---------------------------------------------------------------------------------------------
# In-process: injected failures
# ---------------------------------------------------------------------------------------------

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
    "--limit-batches",
    "2",
]


def _fail_once(monkeypatch, module, name: str, when) -> dict:
    """Make ``module.name`` raise a full-disk error on the call where ``when(args)`` is true, once."""
    original, state = getattr(module, name), {"failed": False}

    def wrapper(*args, **kwargs):
        if not state["failed"] and when(*args):
            state["failed"] = True
            raise OutputError(f"cannot write {args[0]}: No space left on device", "free some space")
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return state


@pytest.mark.parametrize(
    ("target", "name", "when"),
    [
        ("best", "save_weights", lambda path, *_: path.name == rundir.BEST),
        ("last", "save_weights", lambda path, *_: path.name == rundir.LAST),
        ("metrics", "write_jsonl", lambda path, *_: path.name == rundir.METRICS),
    ],
)
def test_a_failure_after_the_commit_leaves_a_run_that_resumes_whole(cli, monkeypatch, target, name, when) -> None:
    module = checkpoint_module if name == "save_weights" else checkpoint_module.rundir
    with monkeypatch.context() as patch:
        state = _fail_once(patch, module, name, when)
        r = cli("train", *TINY, "--name", "x")
    assert state["failed"] and r.exit_code == 1 and "No space left on device" in r.err
    run = Path("runs/x")
    assert read_generation(run).progress.epoch == 1  # the state was committed before the failure
    r = cli("train", "--resume", run)
    assert r.exit_code == 0, r.stderr
    history = rundir.read_jsonl(run / rundir.METRICS)
    assert [h["epoch"] for h in history] == [1, 2] and [h["train_samples"] for h in history] == [100, 100]
    summary = json.loads((run / rundir.SUMMARY).read_text())
    assert load_model(run / rundir.BEST)[1].trained_epochs == summary["best_epoch"]
    assert load_model(run / rundir.LAST)[1].trained_epochs == 2


def test_a_failure_while_writing_the_state_keeps_the_previous_generation(cli, monkeypatch) -> None:
    calls = {"n": 0}
    original = checkpoint_module.atomic_write_bytes

    def full_disk_on_the_third(path, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OutputError(f"cannot write {path}: No space left on device")
        return original(path, data)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint_module, "atomic_write_bytes", full_disk_on_the_third)
        r = cli("train", *TINY, "--checkpoint-every", "1", "--name", "x")
    assert r.exit_code == 1 and "No space left" in r.err
    assert read_generation(Path("runs/x")).progress.global_step == 2  # steps 1 and 2 saved; step 3 failed
    assert cli("train", "--resume", "runs/x").exit_code == 0


def _poison_step(monkeypatch, at_step: int) -> None:
    """Make the weights non-finite in the optimiser step of global step ``at_step`` (0-based)."""
    original = train_module.make_optimizer

    def make(model, settings):
        optimizer = original(model, settings)
        step, count = optimizer.step, {"n": 0}

        def poisoned(*a, **k):
            out = step(*a, **k)
            if count["n"] == at_step:
                with torch.no_grad():
                    model.layer1[0].conv1.weight[0, 0, 0, 0] = float("inf")
            count["n"] += 1
            return out

        optimizer.step = poisoned
        return optimizer

    monkeypatch.setattr(train_module, "make_optimizer", make)


@pytest.mark.parametrize("val_size", ["200", "0"])
def test_weights_made_non_finite_on_an_epochs_last_step_are_never_saved(cli, monkeypatch, val_size) -> None:
    _poison_step(monkeypatch, at_step=3)  # the last step of epoch 2
    r = cli("train", *TINY, "--val-size", val_size, "--name", "x")
    assert r.exit_code == 1
    assert ("validation loss became" if val_size != "0" else "weights became non-finite") in r.err
    assert "last good checkpoint: runs/x/last.safetensors (epoch 1)" in r.err
    for name in (rundir.LAST, rundir.BEST, rundir.LAST_STATE):
        assert (Path("runs/x") / name).is_file()
    read_generation(Path("runs/x"))  # finite, or it would be refused
    assert load_model(Path("runs/x/last.safetensors"))[1].trained_epochs == 1
    rows = Path("runs/x/metrics.jsonl").read_text()
    assert "NaN" not in rows and "Infinity" not in rows and len(rows.splitlines()) == 1


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(cli, monkeypatch) -> None:
    _poison_step(monkeypatch, at_step=0)
    r = cli("train", *TINY, "--val-size", "0", "--checkpoint-every", "1", "--name", "x")
    assert r.exit_code == 1 and "none was saved yet" in r.err
    assert not Path("runs/x").exists()


def test_a_second_process_on_a_locked_run_is_refused(cli) -> None:
    assert cli("train", *TINY, "--epochs", "1", "--name", "x").exit_code == 0
    with rundir.locked(Path("runs/x")):
        r = cli("train", "--resume", "runs/x", "--epochs", "2")
        assert r.exit_code == 1 and f"runs/x is in use: process {os.getpid()} is training in it" in r.err
    assert cli("train", "--resume", "runs/x", "--epochs", "2").exit_code == 0


def test_train_and_compare_import_where_there_is_no_fcntl(tmp_path: Path) -> None:
    """Windows has no fcntl: the modules must still import, and locking says what is missing there."""
    code = (
        "import sys; sys.modules['fcntl'] = None; sys.modules['msvcrt'] = None\n"
        "import cifar_resnet_cli.training.train, cifar_resnet_cli.training.compare, cifar_resnet_cli.cli.app\n"
        "from pathlib import Path\n"
        "from cifar_resnet_cli.training import rundir\n"
        "assert rundir.fcntl is None\n"
        "try:\n"
        "    rundir.locked(Path(sys.argv[1])).__enter__()\n"
        "except rundir.CifarResnetError as exc:\n"
        "    print(exc.message)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert "cannot lock the run folder: this platform has neither fcntl nor msvcrt" in r.stdout


def test_a_copied_run_folder_resumes(cli, tmp_path: Path) -> None:
    assert cli("train", *TINY, "--epochs", "1", "--name", "original").exit_code == 0
    copy = tmp_path / "elsewhere" / "renamed"
    shutil.copytree("runs/original", copy)
    r = cli.json("train", "--resume", copy, "--epochs", "2")
    assert r["resumed_from_epoch"] == 1 and [h["epoch"] for h in r["history"]] == [1, 2]
    assert load_model(copy / rundir.LAST)[1].run == "renamed"
    assert len(rundir.read_jsonl(Path("runs/original") / rundir.METRICS)) == 1  # the original is untouched


def test_stale_temporary_files_are_removed_on_resume(cli) -> None:
    assert cli("train", *TINY, "--epochs", "1", "--name", "x").exit_code == 0
    stale = Path("runs/x/.last.safetensors.abc123.tmp")
    stale.write_bytes(b"\0" * 1000)
    assert cli("train", "--resume", "runs/x", "--epochs", "2").exit_code == 0
    assert not stale.exists()


def test_compare_names_the_damaged_line(cli) -> None:
    assert cli("train", *TINY, "--epochs", "1", "--name", "x").exit_code == 0
    with open("runs/x/metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "val_top1": 0.5\n')
    r = cli("compare", "runs/x")
    assert r.exit_code == 1 and "runs/x/metrics.jsonl, line 2, is not valid JSON" in r.err
    assert "Traceback" not in r.stderr


def test_metrics_are_strict_json(tmp_path: Path) -> None:
    rundir.write_jsonl(tmp_path / "m.jsonl", [{"a": float("nan"), "b": [float("inf"), 1.5]}])
    assert (tmp_path / "m.jsonl").read_text() == '{"a": null, "b": [null, 1.5]}\n'
