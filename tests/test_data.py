from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from cifar_resnet_cli.data.augment import cutmix, mix_batch, mixup, one_hot, preprocess, random_crop_flip
from cifar_resnet_cli.data.loading import load_dataset
from cifar_resnet_cli.data.sets import DataError
from cifar_resnet_cli.data.synthetic import write_synthetic
from tests.conftest import MINI


def test_reads_official_layout_into_uint8_tensors(cifar10_dir: Path) -> None:
    data = load_dataset("cifar10", cifar10_dir, download=False, val_size=20, split_seed=0)
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape == (180, 3, 32, 32)
    assert len(data.val) == 20 and len(data.test) == 50 and data.classes[0] == "airplane"
    # The first image of data_batch_1, pixel by pixel: channel-major rows of 32, as CIFAR stores them.
    raw = pickle.loads((cifar10_dir / "cifar-10-batches-py" / "data_batch_1").read_bytes(), encoding="latin1")
    everything = torch.cat([data.train.images, data.val.images])
    expected = torch.from_numpy(raw["data"][0].reshape(3, 32, 32).copy())
    assert any(torch.equal(img, expected) for img in everything)


def test_split_is_seeded_and_disjoint(cifar10_dir: Path) -> None:
    a = load_dataset("cifar10", cifar10_dir, download=False, val_size=30, split_seed=1)
    b = load_dataset("cifar10", cifar10_dir, download=False, val_size=30, split_seed=1)
    c = load_dataset("cifar10", cifar10_dir, download=False, val_size=30, split_seed=2)
    assert torch.equal(a.val.images, b.val.images) and not torch.equal(a.val.images, c.val.images)
    flat = lambda s: {bytes(img.flatten().tolist()) for img in s.images}  # noqa: E731
    assert not flat(a.train) & flat(a.val)


@pytest.mark.skipif(not MINI.is_dir(), reason="shared/data/cifar10-mini is not here")
def test_reads_the_real_cifar10_mini() -> None:
    data = load_dataset("cifar10", MINI, download=False, val_size=1000, split_seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (9000, 1000, 2000)
    counts = torch.cat([data.train.labels, data.val.labels]).bincount()
    assert counts.sum() == 10_000 and counts.min() > 900  # the official batches are near-balanced


def test_missing_data_names_folder_and_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cifar-10-batches-py: expected data_batch_1, .*test_batch, batches.meta"):
        load_dataset("cifar10", tmp_path, download=False, val_size=0, split_seed=0)


def test_corrupted_and_crafted_batches_are_refused(cifar10_dir: Path, tmp_path: Path) -> None:
    batch = cifar10_dir / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:5000])
    with pytest.raises(DataError, match="data_batch_3 is corrupted"):
        load_dataset("cifar10", cifar10_dir, download=False, val_size=0, split_seed=0)

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    batch.write_bytes(pickle.dumps({"data": Exploit(), "labels": []}, protocol=2))
    with pytest.raises(DataError, match=r"global (posix|os)\.system is not allowed"):
        load_dataset("cifar10", cifar10_dir, download=False, val_size=0, split_seed=0)
    assert not marker.exists()


def test_val_size_too_large(cifar10_dir: Path) -> None:
    with pytest.raises(DataError, match="leaves no training images"):
        load_dataset("cifar10", cifar10_dir, download=False, val_size=200, split_seed=0)


def test_synthetic_is_deterministic_and_in_cifar_layout(tmp_path: Path) -> None:
    a = write_synthetic(tmp_path / "a", num_classes=10, train_size=500)
    b = write_synthetic(tmp_path / "b", num_classes=10, train_size=500)
    for name in ("data_batch_1", "data_batch_5", "test_batch", "batches.meta"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    raw = pickle.loads((a / "data_batch_1").read_bytes(), encoding="latin1")
    assert raw["data"].dtype.name == "uint8" and raw["data"].shape == (100, 3072) and len(raw["labels"]) == 100
    hundred = load_dataset(
        "synthetic", tmp_path, download=False, val_size=100, split_seed=0, num_classes=100, synthetic_size=1000
    )
    assert hundred.classes[99] == "synthetic_99" and int(hundred.train.labels.max()) == 99
    assert (hundred.folder / "train").is_file()  # CIFAR-100 layout for 100 classes


def test_random_crop_flip_takes_windows_of_the_padded_image() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(x, g, padding=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    flips = 0
    for i in range(64):
        windows = [padded[i, :, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
        plain = any(torch.equal(out[i], w) for w in windows)
        mirrored = any(torch.equal(out[i], w.flip(2)) for w in windows)
        assert plain or mirrored
        flips += mirrored and not plain
    assert 15 < flips < 50  # about half are mirrored


@pytest.mark.parametrize("mix", ["cutmix", "mixup", "both"])
def test_mixed_targets_sum_to_one(mix: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 32, 32)
    target = one_hot(torch.randint(0, 10, (32,), generator=g), 10, smoothing=0.1)
    for _ in range(10):
        if mix == "cutmix":
            mixed, t = cutmix(x, target, 1.0, g)
        elif mix == "mixup":
            mixed, t = mixup(x, target, 0.2, g)
        else:
            mixed, t = mix_batch(x, target, cutmix_alpha=1.0, mixup_alpha=0.2, prob=1.0, generator=g)
        assert mixed.shape == x.shape
        assert torch.allclose(t.sum(1), torch.ones(32), atol=1e-6)
        assert (t >= 0).all()


def test_cutmix_target_weight_is_the_pasted_area() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.zeros(2, 1, 32, 32)
    x[1] = 1.0
    target = torch.eye(2)
    for _ in range(20):
        mixed, t = cutmix(x, target, 1.0, g)
        pasted = float(mixed[0].mean())  # image 0 is zeros: its mean is the fraction pasted from image 1
        assert float(t[0, 1]) == pytest.approx(pasted, abs=1e-6)
        assert float(t[1, 0]) == pytest.approx(1 - float(mixed[1].mean()), abs=1e-6)


def test_preprocess_normalises_and_resizes() -> None:
    x = torch.full((2, 3, 32, 32), 128, dtype=torch.uint8)
    out = preprocess(x, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 64)
    assert out.shape == (2, 3, 64, 64)
    assert torch.allclose(out, torch.full_like(out, (128 / 255 - 0.5) / 0.25), atol=1e-5)


def test_the_feature_cache_asks_the_augmentation_pipeline() -> None:
    import torch

    from cifar_resnet_cli.core.settings import TrainSettings
    from cifar_resnet_cli.data.augment import preprocess, random_crop_flip
    from cifar_resnet_cli.data.presets import TrainTransform

    stats = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    plain = TrainSettings(augment=False)
    assert TrainTransform(plain, *stats, 32, 10).is_identity
    for change in (
        {"augment": True},
        {"cutmix": 1.0},
        {"mixup": 0.2},
        {"auto_augment": "randaugment"},
        {"random_erase": 0.1},
    ):
        assert not TrainTransform(plain.model_copy(update=change), *stats, 32, 10).is_identity, change
    # With crop and flip on, the transform is that stage and the normalisation, draw for draw.
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(6)
    x, target = TrainTransform(TrainSettings(), *stats, 32, 10)(images, labels, torch.Generator().manual_seed(3))
    expected = preprocess(random_crop_flip(images, torch.Generator().manual_seed(3), padding=4), *stats, 32)
    assert torch.equal(x, expected) and torch.equal(target, labels)


def test_a_cifar_folder_without_its_test_batch_trains_and_says_there_is_no_test_set(cifar10_dir: Path) -> None:
    (cifar10_dir / "cifar-10-batches-py" / "test_batch").unlink()  # a training set kept apart from its test set
    data = load_dataset("cifar10", cifar10_dir, download=True, val_size=20, split_seed=0)  # no download tried
    assert len(data.test) == 0 and len(data.train) + len(data.val) == 200
    assert any("no test set" in note for note in data.notes)
    (cifar10_dir / "cifar-10-batches-py" / "data_batch_2").unlink()
    with pytest.raises(DataError, match="data_batch_2"):
        load_dataset("cifar10", cifar10_dir, download=False, val_size=20, split_seed=0)
