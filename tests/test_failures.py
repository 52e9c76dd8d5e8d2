"""Full disks, read-only places and damaged checkpoints: one line, exit 1, nothing half-written."""

from __future__ import annotations

import errno
import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from cifar_resnet_cli.cli.app import app
from cifar_resnet_cli.model.weights import tensor_digest

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
    "1",
    "--limit-batches",
    "1",
]


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "w.safetensors"
    r = CliRunner().invoke(app, ["port", "--weights", "none", "--dataset", "synthetic", "--out", str(path)])
    assert r.exit_code == 0, r.stderr
    return path


def _writers(checkpoint: Path, out: Path, image: Path) -> dict[str, list[str | Path]]:
    """Each command that writes, with its output inside ``out``."""
    return {
        "port": ["port", "--weights", "none", "--dataset", "synthetic", "--out", out / "w.safetensors"],
        "export": ["export", checkpoint, "--method", "trace", "--out", out],
        "eval": ["eval", checkpoint, "--confusion", out / "c.csv"],
        "predict": ["predict", checkpoint, image, "--csv", out / "p.csv"],
        "bench": [
            "bench",
            checkpoint,
            "--variants",
            "eager",
            "--batch-sizes",
            "1",
            "--iters",
            "3",
            "--warmup",
            "0",
            "--csv",
            out / "b.csv",
        ],
        "train": ["train", *TINY, "--runs-dir", out / "runs"],
    }


def _raise(code: int):
    def fail(*_a, **_k):
        raise OSError(code, os.strerror(code))

    return fail


@pytest.mark.parametrize("writer", ["port", "export", "eval", "predict", "bench", "train"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_disk_is_one_line_and_leaves_nothing(
    cli, checkpoint, tmp_path, monkeypatch, writer, code
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    args = _writers(checkpoint, out, image)[writer]
    if code == errno.ENOSPC:  # the disk fills up while the result is written, after the work
        monkeypatch.setattr(os, "fsync", _raise(code))
    else:  # a read-only place: refused before any work starts
        monkeypatch.setattr(tempfile, "mkstemp", _raise(code))
    r = cli(*args)
    assert r.exit_code == 1, r.stderr
    assert os.strerror(code) in r.err and "Traceback" not in r.stderr
    assert r.stderr.count("Error:") == 1
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not (out / "runs").exists() or not any((out / "runs").iterdir())  # no half-made run folder
    assert not [p for p in out.iterdir() if p.name != "runs"]


def test_a_file_where_a_folder_is_expected(cli, checkpoint, tmp_path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    r = cli("train", *TINY, "--runs-dir", blocker)
    assert r.exit_code == 1 and "is a file, not a folder" in r.err
    r = cli("export", checkpoint, "--out", blocker)
    assert r.exit_code == 1 and "is a file, not a folder" in r.err
    r = cli("eval", checkpoint, "--confusion", blocker / "c.csv")
    assert r.exit_code == 1 and "is a file, not a folder" in r.err and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------------------
# Damaged checkpoints
# ---------------------------------------------------------------------------------------------


def _data_start(raw: bytes) -> int:
    return 8 + int.from_bytes(raw[:8], "little")


def _damage(checkpoint: Path, kind: str, target: Path) -> Path:
    raw = bytearray(checkpoint.read_bytes())
    if kind == "bit flip":
        raw[_data_start(raw) + 100_003] ^= 0x10
        target.write_bytes(raw)
        return target
    if kind == "NaN bytes":
        at = _data_start(raw) + 4 * 25_000
        raw[at : at + 4] = struct.pack("<f", float("nan"))
        target.write_bytes(raw)
        return target
    tensors = load_file(checkpoint)
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as f:
        header = dict(f.metadata())
    if kind == "NaN weights, digest redone":  # not damage in transit: a diverged model, re-signed
        tensors["fc.weight"][0, 0] = float("nan")
        header["tensors_sha256"] = tensor_digest(tensors)
    else:
        key, value = kind.split("=")
        header[key] = value
    save_file(tensors, str(target), metadata=header)
    return target


DAMAGE = {
    "bit flip": "is damaged: its tensors do not match the sha256 digest",
    "NaN bytes": "is damaged: its tensors do not match the sha256 digest",
    "NaN weights, digest redone": "holds non-finite weights (1 tensors: fc.weight)",
    "image_size=0": "invalid metadata: image_size",
    "image_size=100000": "invalid metadata: image_size",
    "std=[0.0, 0.25, 0.25]": "invalid metadata: std",
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_checkpoints_are_refused_everywhere(cli, checkpoint, tmp_path, kind) -> None:
    bad = _damage(checkpoint, kind, tmp_path / "bad.safetensors")
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    (tmp_path / "exports").mkdir()
    commands = {
        "eval": ["eval", bad, "--dataset", "synthetic"],
        "export": ["export", bad, "--out", tmp_path / "exports"],
        "bench": ["bench", bad, "--variants", "eager", "--batch-sizes", "1", "--iters", "3", "--warmup", "0"],
        "predict": ["predict", bad, image],
        "train --init": ["train", *TINY, "--init", bad],
    }
    for name, args in commands.items():
        r = cli(*args)
        assert r.exit_code == 1, (name, r.stderr)
        assert f"{bad}" in r.err and DAMAGE[kind] in r.err, (name, r.err)
        assert "Traceback" not in r.stderr
    assert not any((tmp_path / "exports").iterdir()) and not Path("runs").exists()


def test_the_digest_covers_names_shapes_and_bytes(checkpoint) -> None:
    tensors = load_file(checkpoint)
    digest = tensor_digest(tensors)
    renamed = {("fc.w" if k == "fc.weight" else k): v for k, v in tensors.items()}
    reshaped = {**tensors, "fc.bias": tensors["fc.bias"].reshape(2, 5)}
    assert len({digest, tensor_digest(renamed), tensor_digest(reshaped)}) == 3
    meta = json.loads(checkpoint.read_bytes()[8 : _data_start(checkpoint.read_bytes())])["__metadata__"]
    assert meta["tensors_sha256"] == digest
