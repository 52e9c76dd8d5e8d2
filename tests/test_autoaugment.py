"""The batched TrivialAugment/RandAugment operations equal torchvision's, image by image."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from cifar_resnet_cli.data import autoaugment as A


@pytest.fixture
def batch() -> torch.Tensor:
    x = torch.randint(0, 256, (6, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    x[1] = x[1] // 4 + 60  # a low-contrast image, for autocontrast and equalize
    return x


def _ours(x: torch.Tensor, name: str, m: float) -> torch.Tensor:
    out = A._OPERATIONS[name](x.float(), torch.full((len(x),), float(m)))
    return out.round().clamp(0, 255).to(torch.uint8)


def _shear(axis: int, m: float) -> dict:
    shear = [0.0, 0.0]
    shear[axis] = math.degrees(math.atan(m))
    return {"angle": 0.0, "translate": [0, 0], "scale": 1.0, "shear": shear, "center": [0, 0]}  # as its policies


@pytest.mark.parametrize(
    ("name", "m", "reference"),
    [
        ("equalize", 0, TF.equalize),
        ("posterize", 3, lambda x: TF.posterize(x, 3)),
        ("solarize", 0.5, lambda x: TF.solarize(x, 127.5)),
        ("rotate", 90, lambda x: TF.rotate(x, 90)),
        ("rotate", -30, lambda x: TF.rotate(x, -30)),
        ("translate_x", 5, lambda x: TF.affine(x, angle=0, translate=[5, 0], scale=1, shear=[0, 0])),
        ("translate_y", -7, lambda x: TF.affine(x, angle=0, translate=[0, -7], scale=1, shear=[0, 0])),
        ("shear_x", 0.3, lambda x: TF.affine(x, **_shear(0, 0.3))),
        # Not -0.2: 0.2 x 2.5 px lands pixels exactly halfway, where nearest rounding may go either way.
        ("shear_y", -0.23, lambda x: TF.affine(x, **_shear(1, -0.23))),
    ],
)
def test_exact_operations_equal_torchvision(batch: torch.Tensor, name: str, m: float, reference) -> None:
    assert torch.equal(_ours(batch, name, m), reference(batch))


@pytest.mark.parametrize(
    ("name", "m", "reference"),
    [
        ("brightness", 0.3, lambda x: TF.adjust_brightness(x, 1.3)),
        ("color", -0.5, lambda x: TF.adjust_saturation(x, 0.5)),
        ("contrast", 0.4, lambda x: TF.adjust_contrast(x, 1.4)),
        ("sharpness", 0.7, lambda x: TF.adjust_sharpness(x, 1.7)),
        ("autocontrast", 0, TF.autocontrast),
    ],
)
def test_blends_equal_torchvision_up_to_rounding(batch: torch.Tensor, name: str, m: float, reference) -> None:
    # torchvision truncates the blended float to uint8, we round it (as PIL does): at most 1 apart.
    diff = (_ours(batch, name, m).int() - reference(batch).int()).abs()
    assert int(diff.max()) <= 1


@pytest.mark.parametrize("policy", ["trivialaugment", "randaugment"])
def test_each_image_draws_its_own_operation_and_draws_repeat(batch: torch.Tensor, policy: str) -> None:
    images = batch[:1].expand(64, -1, -1, -1).contiguous()  # one image, 64 times
    out = A.auto_augment(images, policy, torch.Generator().manual_seed(1))
    again = A.auto_augment(images, policy, torch.Generator().manual_seed(1))
    assert out.dtype == torch.uint8 and out.shape == images.shape and torch.equal(out, again)
    distinct = {bytes(o.flatten().tolist()) for o in out}
    assert len(distinct) > 20  # per image, not one draw for the whole batch
    assert torch.equal(A.auto_augment(images, "none", torch.Generator()), images)


def test_random_erase_boxes_cover_the_stated_areas() -> None:
    x = torch.zeros(400, 3, 32, 32)
    out = A.random_erase(x, 0.5, torch.Generator().manual_seed(0))
    erased = (out != 0).any(1).float().mean((1, 2))
    hit = erased > 0
    assert 0.4 < float(hit.float().mean()) < 0.6  # probability 0.5 per image
    assert float(erased[hit].min()) >= 0.015 and float(erased[hit].max()) <= 0.34  # scale (0.02, 0.33)
    assert torch.equal(A.random_erase(x, 0.0, torch.Generator()), x)
