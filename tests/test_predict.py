from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_resnet_cli.measure.predict import PredictResult
from cifar_resnet_cli.model.weights import load_model


@pytest.fixture
def checkpoint(cli, tmp_path: Path) -> Path:
    path = tmp_path / "w.safetensors"
    assert cli("port", "--weights", "none", "--dataset", "synthetic", "--out", path).exit_code == 0
    return path


def _write_images(folder: Path) -> dict[str, np.ndarray]:
    """Images at the model's size (32x32) in several modes, and what RGB each decodes to."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "rgb.png")
    expected["rgb.png"] = rgb
    rgba = rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    # Transparency is composited on white: colour * alpha + 255 * (1 - alpha), rounded as Pillow does.
    white = Image.new("RGBA", (32, 32), (255, 255, 255, 255))
    expected["rgba.png"] = np.asarray(Image.alpha_composite(white, Image.fromarray(rgba, "RGBA")).convert("RGB"))
    alpha = rgba[..., 3:].astype(np.float64) / 255
    by_formula = rgba[..., :3] * alpha + 255 * (1 - alpha)
    assert np.abs(expected["rgba.png"] - by_formula).max() <= 1
    grey = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    Image.fromarray(grey, "L").save(folder / "grey.png")
    expected["grey.png"] = np.repeat(grey[..., None], 3, axis=2)
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(folder / "palette.png")
    expected["palette.png"] = np.asarray(palette.convert("RGB"))
    Image.fromarray(rgb).save(folder / "photo.jpg", quality=95)
    expected["photo.jpg"] = np.asarray(Image.open(folder / "photo.jpg").convert("RGB"))
    return expected


def test_predictions_equal_the_model_on_the_same_tensors(cli, checkpoint: Path, tmp_path: Path) -> None:
    expected = _write_images(tmp_path / "imgs")
    result = PredictResult.model_validate(cli.json("predict", checkpoint, tmp_path / "imgs", "--top-k", "3"))
    assert result.failed == 0 and len(result.predictions) == 5
    model, meta = load_model(checkpoint)
    model.eval()
    mean, std = torch.tensor(meta.mean).view(1, 3, 1, 1), torch.tensor(meta.std).view(1, 3, 1, 1)
    # The reference runs the same batch that predict ran (all five images, in the same order): CPU
    # convolution kernels may round differently at another batch size, so comparing a batch of 5 with
    # images run one by one would test the kernels, not predict. On the same batch, equality is exact.
    arrays = [expected[Path(p.file).name] for p in result.predictions]
    x = (torch.stack([torch.from_numpy(a.copy()).permute(2, 0, 1) for a in arrays]).float() / 255 - mean) / std
    with torch.inference_mode():
        all_probs = model(x).softmax(1)
    for p, probs in zip(result.predictions, all_probs, strict=True):
        top = probs.topk(3)
        assert [g.index for g in p.top] == top.indices.tolist()
        assert [g.probability for g in p.top] == top.values.tolist()
        assert p.top[0].label == meta.class_names[p.top[0].index]
    modes = {Path(p.file).name: p.mode for p in result.predictions}
    assert modes == {"rgb.png": "RGB", "rgba.png": "RGBA", "grey.png": "L", "palette.png": "P", "photo.jpg": "RGB"}


def test_other_sizes_are_resized(cli, checkpoint: Path, tmp_path: Path) -> None:
    Image.fromarray(np.zeros((90, 200, 3), np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(np.zeros((7, 5, 3), np.uint8)).save(tmp_path / "tiny.bmp")
    for mode in ("crop", "stretch"):
        r = cli.json("predict", checkpoint, tmp_path / "wide.png", tmp_path / "tiny.bmp", "--resize", mode)
        assert r["failed"] == 0 and [p["width"] for p in r["predictions"]] == [200, 5]


def test_checkpoint_and_archive_agree(cli, checkpoint: Path, tmp_path: Path) -> None:
    _write_images(tmp_path / "imgs")
    exported = cli.json("export", checkpoint, "--method", "trace", "--out", tmp_path)
    a = cli.json("predict", checkpoint, tmp_path / "imgs")
    b = cli.json("predict", exported["archives"][0]["path"], tmp_path / "imgs")
    assert [p["top"][0]["index"] for p in a["predictions"]] == [p["top"][0]["index"] for p in b["predictions"]]


def test_broken_files_are_reported_and_the_rest_classified(cli, checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    _write_images(folder)
    (folder / "notes.png").write_text("not an image")
    good = (folder / "photo.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "sub").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "sub" / "deep.png")

    r = cli("predict", checkpoint, folder, "--json", "--csv", tmp_path / "p.csv")
    assert r.exit_code == 1 and "2 of 7 files could not be classified" in r.err
    result = PredictResult.model_validate_json(r.stdout)
    errors = {Path(p.file).name: p.error for p in result.predictions if p.error}
    assert set(errors) == {"notes.png", "truncated.jpg"}
    assert "cannot identify image file" in errors["notes.png"]
    assert "truncated" in errors["truncated.jpg"].lower()
    assert sum(1 for p in result.predictions if p.top) == 5
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "file,rank,label,index,probability,error" and len(rows) == 1 + 5 * 3 + 2

    deep = cli.json("predict", checkpoint, folder / "sub", "--recursive")
    assert len(deep["predictions"]) == 1
    r = cli("predict", checkpoint, folder, "--recursive", "--json")
    assert len(PredictResult.model_validate_json(r.stdout).predictions) == 8


def test_missing_input_and_metadata(cli, checkpoint: Path, tmp_path: Path) -> None:
    r = cli("predict", checkpoint, tmp_path / "nothing.png")
    assert r.exit_code == 1 and "does not exist" in r.err
    (tmp_path / "empty").mkdir()
    r = cli("predict", checkpoint, tmp_path / "empty")
    assert r.exit_code == 1 and "no images found" in r.err
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(plain))
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.png")
    r = cli("predict", plain, tmp_path / "x.png")
    assert r.exit_code == 1 and "no cifar_resnet.json" in r.err
