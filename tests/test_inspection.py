from __future__ import annotations

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from cifar_resnet_cli.core.settings import load_settings
from cifar_resnet_cli.model import inspection
from cifar_resnet_cli.model.inspection import InspectResult, inspect_model


def _inspect(**model) -> InspectResult:
    return inspect_model(load_settings(None, {"model": model}))


def test_imagenet_stem_is_identical_to_torchvision() -> None:
    result = _inspect(stem="imagenet")
    assert result.passed
    assert result.max_abs_diff == 0.0  # same operations in fp32: exactly equal
    assert [p.name for p in result.parity] == [
        "stem",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "features",
        "logits",
    ]
    assert result.tensors_differing == []
    assert result.tensors_same == len(result.tensors) == 218  # 110 parameters + 108 buffers
    assert result.total_params == result.torchvision_params == 21_289_802


def test_cifar_stem_lists_conv1_and_matches_adapted_torchvision() -> None:
    result = _inspect(stem="cifar")
    assert result.passed and result.max_abs_diff <= 1e-6
    assert result.tensors_differing == ["conv1.weight"]
    conv1 = next(t for t in result.tensors if t.name == "conv1.weight")
    assert conv1.ours == [64, 3, 3, 3] and conv1.torchvision == [64, 3, 7, 7]
    assert result.torchvision_params - result.total_params == 64 * 3 * (49 - 9)
    assert next(p for p in result.parity if p.name == "layer4").shape == [2, 512, 4, 4]
    assert result.warnings == []


def test_one_by_one_final_map_is_warned_about() -> None:
    assert any("1x1" in w for w in _inspect(stem="imagenet", image_size=32).warnings)
    assert _inspect(stem="imagenet", image_size=64).warnings == []


def test_layer_table_shapes_params_and_flops() -> None:
    result = _inspect(stem="imagenet", image_size=224)
    rows = {r.name: r for r in result.layers}
    assert rows["conv1"].output_shape == [1, 64, 112, 112]
    assert rows["maxpool"].output_shape == [1, 64, 56, 56]
    assert rows["layer4.2"].output_shape == [1, 512, 7, 7]
    assert rows["fc"].params == 512 * 10 + 10
    assert (
        sum(rows[f"layer{i}"].params for i in range(1, 5))
        + rows["conv1"].params
        + rows["bn1"].params
        + rows["fc"].params
        == result.total_params
    )
    # The reference count: torch's FLOP counter on torchvision's own model, ~3.67 GMACs.
    ref = torchvision.models.resnet34(weights=None, num_classes=10).eval()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        ref(torch.randn(1, 3, 224, 224))
    assert result.total_flops == counter.get_total_flops()
    assert 7.2e9 < result.total_flops < 7.4e9
    assert rows["conv1"].flops == 2 * 64 * 3 * 7 * 7 * 112 * 112


def test_depth_controls_rows_and_frozen_status() -> None:
    settings = load_settings(None, {"train": {"freeze_backbone": True}})
    result = inspect_model(settings, depth=1)
    assert [r.name for r in result.layers][:4] == ["conv1", "bn1", "relu", "maxpool"]
    assert not any("." in r.name for r in result.layers)
    assert result.trainable_params == 5130
    status = {r.name: r.status for r in result.layers}
    assert status["fc"] == "trainable" and status["layer3"] == "frozen" and status["relu"] == "-"
    deep = inspect_model(load_settings(), depth=3)
    assert "layer2.0.downsample" in {r.name for r in deep.layers}


def test_a_real_difference_fails_inspect(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    original = inspection.torchvision_reference

    def off_by_eps(stem: str, num_classes: int):
        ref = original(stem, num_classes)
        ref.layer3[1].bn1.eps = 1e-3  # a different operation than ours
        return ref

    monkeypatch.setattr(inspection, "torchvision_reference", off_by_eps)
    result = cli("inspect", "--image-size", "64")
    assert result.exit_code == 1
    assert "differs from torchvision" in result.stderr
    assert "FAIL" in result.stdout
