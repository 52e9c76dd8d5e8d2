"""Image-folder datasets: layouts, broken files, conversions, the cache, and equality with the CIFAR path."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_cifar10
from PIL import Image
from safetensors.torch import load_file

from cifar_resnet_cli.core.errors import CifarResnetError
from cifar_resnet_cli.data import folders, images
from cifar_resnet_cli.data.folders import load_image_folder
from cifar_resnet_cli.data.loading import load_dataset

CLASSES = ("cat", "dog", "fox")
COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "fox": (40, 40, 200)}


def _photo(rng: np.random.Generator, name: str, size: tuple[int, int]) -> Image.Image:
    """A noisy image whose colour says its class, so a model can learn it."""
    base = np.array(COLOURS[name], dtype=np.int16)
    pixels = base + rng.integers(-40, 40, size=(size[1], size[0], 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def make_folder(
    root: Path, *, per_class: int = 12, splits: tuple[str, ...] = ("train", "val", "test"), seed: int = 0
) -> Path:
    rng = np.random.default_rng(seed)
    for split in splits:
        n = per_class if split == "train" else max(3, per_class // 3)
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                size = (int(rng.integers(32, 80)), int(rng.integers(32, 80)))
                ext = ".png" if i % 2 else ".jpg"
                _photo(rng, name, size).save(folder / f"{i:03d}{ext}")
    return root


def _read(root: Path, image_size: int = 32, **kw):
    return load_image_folder(
        root, image_size, val_size=kw.pop("val_size", None), val_size_chosen=False, split_seed=0, **kw
    )


def test_layout_classes_splits_and_broken_files_listed(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "photos")
    (root / "train" / "cat" / "truncated.jpg").write_bytes((root / "train" / "cat" / "000.jpg").read_bytes()[:300])
    (root / "train" / "dog" / "not-an-image.png").write_text("hello")
    (root / "train" / "dog" / "empty.png").write_bytes(b"")
    (root / "train" / "fox" / "notes.txt").write_text("a note")
    (root / "train" / "fox" / ".DS_Store").write_bytes(b"\0")  # hidden: ignored, not listed
    (root / "train" / "loose.jpg").write_bytes(b"")
    data = _read(root)
    assert data.name == "folder" and data.classes == CLASSES
    assert (len(data.train), len(data.val), len(data.test)) == (36, 12, 12)
    assert data.train.images.shape[1:] == (3, 32, 32) and data.train.images.dtype == torch.uint8
    assert torch.bincount(data.train.labels).tolist() == [12, 12, 12]
    # The colour of each image is its class's colour: labels follow folder names.
    mean_colour = data.train.images.float().mean((2, 3))
    assert (mean_colour.argmax(1) == data.train.labels).all()
    note = next(n for n in data.notes if "skipped" in n)
    assert note.startswith("5 files skipped") and "and 2 more" in note  # the first three are named
    skipped = dict(folders.read_folder(root, 32, tmp_path / "cache2")[0].skipped)
    assert set(skipped) == {
        "train/cat/truncated.jpg",
        "train/dog/not-an-image.png",
        "train/dog/empty.png",
        "train/fox/notes.txt",
        "train/loose.jpg",
    }
    assert "not an image file extension (.txt)" in skipped["train/fox/notes.txt"]
    assert "not inside a class folder" in skipped["train/loose.jpg"]
    assert "UnidentifiedImageError" in skipped["train/dog/not-an-image.png"]
    assert "truncated" in skipped["train/cat/truncated.jpg"].lower()


def test_without_val_and_test_the_split_is_drawn_and_no_test_set_is_invented(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "photos", per_class=10, splits=("train",))
    data = _read(root)
    assert (len(data.train), len(data.val), len(data.test)) == (27, 3, 0)  # 10% of 30 held out
    assert any("no test/ folder" in n for n in data.notes)
    again = _read(root)
    assert torch.equal(again.val.images, data.val.images)  # seeded: the same split every time
    assert len(_read(root, val_size=6).val) == 6


def test_image_modes_are_converted_as_stated(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red, but fully transparent on the left half
    rgba[:, 4:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    x = images.read_image(tmp_path / "rgba.png")[0]
    assert x[:, :, :4].eq(255).all()  # transparent: white, not the hidden red
    assert x[:, :, 4:].tolist() == torch.tensor([255, 0, 0]).view(3, 1, 1).expand(3, 8, 4).tolist()

    grey16 = np.array([[0, 32896, 65535, 257]], dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    assert images.read_image(tmp_path / "grey16.png")[0][0, 0].tolist() == [0, 128, 255, 1]

    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    palette.info["transparency"] = 0
    palette.putpixel((0, 0), 0)
    palette.save(tmp_path / "palette.png", transparency=0)
    p = images.read_image(tmp_path / "palette.png")[0]
    assert p[:, 0, 0].tolist() == [255, 255, 255] and p[:, 1, 1].tolist() == [10, 20, 30]

    Image.new("L", (4, 4), 77).save(tmp_path / "grey.png")
    assert images.read_image(tmp_path / "grey.png")[0].eq(77).all()

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.new("RGB", (40, 20), (0, 0, 0)).save(tmp_path / "rotated.jpg", exif=exif)
    shown, width, height, _ = images.read_image(tmp_path / "rotated.jpg")
    assert (width, height) == (40, 20) and tuple(shown.shape) == (3, 40, 20)


def test_huge_images_are_refused_not_decoded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_folder(tmp_path / "photos", per_class=4, splits=("train",))
    Image.new("RGB", (300, 300)).save(root / "train" / "cat" / "huge.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 200 * 200)
    skipped = dict(folders.read_folder(root, 32, tmp_path / "cache")[0].skipped)
    assert "pixel limit" in skipped["train/cat/huge.png"]


def test_symlinks_are_followed_once_and_broken_links_listed(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "photos", per_class=4, splits=("train",))
    elsewhere = make_folder(tmp_path / "elsewhere", per_class=3, splits=("train",))
    os.symlink(elsewhere / "train" / "cat", root / "train" / "cat" / "more")  # a linked folder
    os.symlink(root / "train" / "cat", root / "train" / "cat" / "loop")  # a cycle
    os.symlink(tmp_path / "missing.jpg", root / "train" / "dog" / "gone.jpg")
    found, _ = folders.read_folder(root, 32, tmp_path / "cache")
    assert torch.bincount(found.labels["train"]).tolist() == [7, 4, 4]
    assert "cannot be read" in dict(found.skipped)["train/dog/gone.jpg"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda r: None, "does not exist"),
        (lambda r: (r / "images" / "cat").mkdir(parents=True), "has no train/ folder (it holds images/)"),
        (lambda r: (r / "train" / "cat").mkdir(parents=True), "1 class folder (cat); a classifier needs at least 2"),
        (lambda r: [(r / "train" / c).mkdir(parents=True) for c in ("a", "b")], "no images in the class folders a, b"),
    ],
)
def test_folders_that_are_not_datasets(tmp_path: Path, make, message: str) -> None:
    root = tmp_path / "photos"
    make(root)
    with pytest.raises(CifarResnetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _read(root)


def test_pointing_at_train_itself_names_the_folder_to_pass(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "photos", per_class=2, splits=("train",))
    with pytest.raises(CifarResnetError) as caught:
        _read(root / "train")
    assert caught.value.hint == f"pass --data-dir {root}, the folder that holds train/"


def test_val_with_a_class_train_lacks_and_a_class_of_broken_files(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "photos", per_class=4)
    (root / "val" / "wolf").mkdir()
    with pytest.raises(CifarResnetError, match="class folders that train/ does not have: wolf"):
        _read(root)
    (root / "val" / "wolf").rmdir()
    for f in (root / "train" / "fox").iterdir():
        f.write_bytes(b"broken")
    with pytest.raises(CifarResnetError, match="no readable images in fox"):
        _read(root)


def test_cache_hit_then_a_changed_folder_is_read_again(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "photos", per_class=4)
    cache = tmp_path / "cache"
    first, _ = folders.read_folder(root, 32, cache)
    second, _ = folders.read_folder(root, 32, cache)
    assert not first.cached and second.cached
    for split in first.images:
        assert torch.equal(first.images[split], second.images[split])
        assert torch.equal(first.labels[split], second.labels[split])
    assert len(list(cache.iterdir())) == 1
    assert not folders.read_folder(root, 48, cache)[0].cached  # another image size: another file
    target = root / "train" / "cat" / "001.png"
    Image.new("RGB", (40, 40), (255, 255, 255)).save(target)
    changed, _ = folders.read_folder(root, 32, cache)
    assert not changed.cached and not torch.equal(changed.images["train"], first.images["train"])
    (root / "train" / "dog" / "000.jpg").unlink()
    assert len(folders.read_folder(root, 32, cache)[0].labels["train"]) == 11
    for file in cache.iterdir():  # a damaged cache is read again, never trusted
        file.write_bytes(file.read_bytes()[:1000])
    again, _ = folders.read_folder(root, 32, cache)
    assert not again.cached and len(again.labels["train"]) == 11


def _cifar_sorted_by_class(folder: Path) -> Path:
    """A tiny CIFAR-10 whose images are ordered by class: the order an image folder reads in."""
    write_cifar10(folder, train_per_batch=30, test=30)
    root = folder / "cifar-10-batches-py"
    for names in ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]):
        batches = [pickle.loads((root / name).read_bytes()) for name in names]
        labels = np.concatenate([b["labels"] for b in batches])
        data = np.concatenate([b["data"] for b in batches])
        order = np.argsort(labels, kind="stable")
        for i, (name, batch) in enumerate(zip(names, batches, strict=True)):
            part = order[i * len(batch["labels"]) : (i + 1) * len(batch["labels"])]
            batch["labels"], batch["data"] = labels[part].tolist(), data[part]
            (root / name).write_bytes(pickle.dumps(batch, 2))
    return folder


def _write_as_folder(cifar: Path, out: Path) -> Path:
    """The same images as PNG files in class folders, in the files' order within each class."""
    root = cifar / "cifar-10-batches-py"
    classes = pickle.loads((root / "batches.meta").read_bytes())["label_names"]
    for split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        batches = [pickle.loads((root / name).read_bytes()) for name in names]
        labels = np.concatenate([b["labels"] for b in batches])
        pixels = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        for rank, (image, label) in enumerate(zip(pixels, labels, strict=True)):
            folder = out / split / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{rank:06d}.png")
    return out


def test_the_folder_path_trains_exactly_as_the_cifar_path_on_the_same_images(cli, tmp_path: Path, resnet34_pth) -> None:
    cifar = _cifar_sorted_by_class(tmp_path / "cifar")
    folder = _write_as_folder(cifar, tmp_path / "as-folder")
    cifar_data = load_dataset("cifar10", cifar, download=False, val_size=0, split_seed=0)
    folder_data = _read(folder, val_size=0)
    # Lossless PNG at 32 px: the decoded tensors are the CIFAR tensors, in the same order.
    split_files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png") if p.parts[-3] == "train")
    assert len(split_files) == len(cifar_data.train)
    assert torch.equal(
        folder_data.test.images, cifar_data.test.images[torch.argsort(cifar_data.test.labels, stable=True)]
    )

    ported = tmp_path / "init.safetensors"
    assert cli("port", "--from", resnet34_pth, "--out", ported).exit_code == 0
    common = ["--init", ported, "--epochs", "1", "--batch-size", "25", "--val-size", "30"]
    a = cli.json("train", "--dataset", "cifar10", "--data-dir", cifar, "--no-download", *common, "--name", "c")
    b = cli.json("train", "--dataset", "folder", "--data-dir", folder, *common, "--name", "f")
    assert a["test_top1"] == b["test_top1"] and a["history"][0]["train_loss"] == b["history"][0]["train_loss"]
    wa, wb = load_file(a["best_checkpoint"]), load_file(b["best_checkpoint"])
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_train_eval_predict_on_a_folder_name_the_users_classes(cli, tmp_path: Path) -> None:
    root = make_folder(tmp_path / "photos", per_class=12)
    run = cli.json(
        "train",
        "--dataset",
        "folder",
        "--data-dir",
        root,
        "--init",
        "none",
        "--epochs",
        "2",
        "--batch-size",
        "12",
        "--lr",
        "0.02",
        "--name",
        "mine",
    )
    assert (run["dataset"], run["train_images"], run["val_images"], run["test_images"]) == ("folder", 36, 12, 12)
    settings = json.loads((Path(run["run_dir"]) / "settings.json").read_text())
    assert settings["model"]["num_classes"] == 3 and settings["data"]["val_size"] == 12
    result = cli.json("eval", run["best_checkpoint"])
    assert [c["name"] for c in result["per_class"]] == list(CLASSES)
    assert (result["dataset"], result["split"], result["images"]) == ("folder", "test", 12)
    predicted = cli.json("predict", run["best_checkpoint"], root / "test" / "dog")
    assert {g["label"] for p in predicted["predictions"] for g in p["top"]} <= set(CLASSES)

    other = make_folder(tmp_path / "other", per_class=4)
    (other / "train" / "fox").rename(other / "train" / "wolf")
    for split in ("val", "test"):
        (other / split / "fox").rename(other / split / "wolf")
    r = cli("eval", run["best_checkpoint"], "--data-dir", other)
    assert r.exit_code == 1 and "other classes than the image folder" in r.err and "not in the data: fox" in r.err
    assert len(r.stderr.strip().splitlines()) == 1


def test_folder_without_test_reports_no_test_set(cli, tmp_path: Path) -> None:
    root = make_folder(tmp_path / "photos", per_class=10, splits=("train",))
    (root / "train" / "dog" / "broken.png").write_bytes(b"not a png")
    run = cli.json(
        "train", "--dataset", "folder", "--data-dir", root, "--init", "none", "--epochs", "1", "--batch-size", "9"
    )
    assert run["skipped_files"] == [
        "train/dog/broken.png (UnidentifiedImageError: cannot identify image file "
        f"'{root / 'train' / 'dog' / 'broken.png'}')"
    ]
    assert run["test_top1"] is None and run["test_images"] == 0
    assert any("no test/ folder" in w for w in run["warnings"])
    r = cli("eval", run["best_checkpoint"])
    assert r.exit_code == 1 and "has no test/ folder" in r.err and "--split val" in r.err
    assert cli.json("eval", run["best_checkpoint"], "--split", "val")["top1"] is not None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "folder"], "--dataset folder needs --data-dir DIR"),
        (["--dataset", "folder", "--data-dir", "photos", "--val-size", "5"], "is this dataset's validation set"),
        (["--dataset", "folder", "--data-dir", "photos", "NUM_CLASSES=10"], "num_classes 10: photos has 3 class"),
    ],
)
def test_bad_folder_options_write_nothing(cli, tmp_path: Path, args: list[str], message: str) -> None:
    make_folder(tmp_path / "photos", per_class=4)
    env = {"CIFAR_RESNET_MODEL__NUM_CLASSES": "10"} if "NUM_CLASSES=10" in args else None
    r = cli("train", *[a for a in args if a != "NUM_CLASSES=10"], "--init", "none", "--epochs", "1", env=env)
    assert r.exit_code == 1 and message in r.err, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not Path("runs").exists()
