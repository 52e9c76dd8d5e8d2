from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import assert_fp32_close

from cifar_resnet_cli.model.resnet import freeze_backbone, replace_head, resnet34, unfreeze_backbone


def test_imagenet_stem_has_torchvision_names_shapes_and_order() -> None:
    ours = resnet34(num_classes=1000, stem="imagenet").state_dict()
    theirs = torchvision.models.resnet34(weights=None).state_dict()
    assert list(ours) == list(theirs)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    assert [n for n, _ in resnet34().named_children()] == [
        "conv1",
        "bn1",
        "relu",
        "maxpool",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "avgpool",
        "fc",
    ]


def test_torchvision_state_dict_loads_strictly_and_computes_the_same() -> None:
    torch.manual_seed(0)
    theirs = torchvision.models.resnet34(weights=None).eval()
    ours = resnet34(num_classes=1000).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(ours(x), theirs(x))


def test_cifar_stem_keeps_resolution() -> None:
    model = resnet34(num_classes=10, stem="cifar").eval()
    assert model.conv1.weight.shape == (64, 3, 3, 3)
    assert model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    feats = {}
    model.layer4.register_forward_hook(lambda _m, _i, o: feats.update(layer4=o.shape))
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert feats["layer4"] == (1, 512, 4, 4)


@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
@pytest.mark.numerics
def test_scripted_and_traced_match_eager(stem: str) -> None:
    model = resnet34(num_classes=10, stem=stem).eval()
    x = torch.randn(3, 3, 32, 32)
    scripted = torch.jit.script(model)
    traced = torch.jit.trace(model, torch.randn(2, 3, 32, 32))
    with torch.inference_mode():
        expected = model(x)
        assert_fp32_close(scripted(x), expected)
        assert_fp32_close(traced(x), expected)


def test_unknown_stem_and_bad_class_count_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown stem"):
        resnet34(stem="vit")
    with pytest.raises(ValueError, match="num_classes"):
        resnet34(num_classes=0)


def test_freeze_backbone_keeps_batchnorm_statistics_through_train_mode() -> None:
    model = freeze_backbone(resnet34(num_classes=10, stem="cifar"))
    model.train()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(bn.training for bn in bns)
    assert model.training and model.fc.training
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model(torch.randn(4, 3, 32, 32) * 3 + 1)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    unfreeze_backbone(model).train()
    assert all(p.requires_grad for p in model.parameters())
    assert all(bn.training for bn in bns)


def test_replace_head_is_reproducible_with_a_generator() -> None:
    a = replace_head(resnet34(), 100, generator=torch.Generator().manual_seed(3))
    b = replace_head(resnet34(), 100, generator=torch.Generator().manual_seed(3))
    assert a.fc.weight.shape == (100, 512)
    assert torch.equal(a.fc.weight, b.fc.weight) and torch.equal(a.fc.bias, b.fc.bias)
    bound = 1 / 512**0.5
    assert float(a.fc.weight.detach().abs().max()) <= bound
