from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import squash
from safetensors import safe_open

from cifar_resnet_cli.core.kinds import CIFAR10_CLASSES, CIFAR_STATS, IMAGENET_MEAN, IMAGENET_STD
from cifar_resnet_cli.model import port as port_module
from cifar_resnet_cli.model.port import PortResult, adapt_conv1_kernel
from cifar_resnet_cli.model.weights import load_model


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") and p.suffix == ".tmp")


def test_port_round_trip_from_pth(cli, resnet34_pth: Path, tmp_path: Path) -> None:
    out = tmp_path / "w.safetensors"
    data = cli.json("port", "--from", resnet34_pth, "--out", out)
    result = PortResult.model_validate(data)
    assert result.max_abs_diff == 0.0 and result.roundtrip_max_abs_diff == 0.0
    assert result.copied == 216 and [a.name for a in result.changed] == ["fc.weight", "fc.bias"]
    assert result.output_sha256 == hashlib.sha256(out.read_bytes()).hexdigest()

    # Every backbone tensor is the source's, bit for bit.
    source = torch.load(resnet34_pth, weights_only=True)
    model, _ = load_model(out)
    for name, tensor in model.state_dict().items():
        if not name.startswith("fc."):
            assert torch.equal(tensor, source[name]), name

    # The file in a fresh model: same features as torchvision with the source weights, and the same
    # logits every time it is loaded.
    ref = torchvision.models.resnet34(weights=None)
    ref.load_state_dict(source)
    ref.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    again, _ = load_model(out)
    with torch.inference_mode():
        model.eval(), ref.eval(), again.eval()
        assert torch.equal(model.forward_features(x), ref(x))
        assert torch.equal(model(x), again(x))
        assert model(x).shape == (2, 10)


def test_metadata_is_readable_with_plain_safetensors(cli, resnet34_pth: Path, tmp_path: Path) -> None:
    out = tmp_path / "w.safetensors"
    assert cli("port", "--from", resnet34_pth, "--out", out, "--image-size", "64").exit_code == 0
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["format_version"] == "2" and meta["arch"] == "resnet34" and len(meta["tensors_sha256"]) == 64
    assert meta["stem"] == "imagenet" and meta["num_classes"] == "10"
    assert json.loads(meta["class_names"]) == list(CIFAR10_CLASSES)
    assert json.loads(meta["mean"]) == list(IMAGENET_MEAN) and json.loads(meta["std"]) == list(IMAGENET_STD)
    assert meta["image_size"] == "64" and meta["pretrained"] == "true"
    assert meta["source"] == str(resnet34_pth)
    assert meta["source_sha256"] == hashlib.sha256(resnet34_pth.read_bytes()).hexdigest()
    assert meta["package_version"]


@pytest.mark.parametrize(("mode", "word"), [("adapt", "adapted"), ("reinit", "reinitialised")])
def test_cifar_stem_conv1(cli, resnet34_pth: Path, tmp_path: Path, mode: str, word: str) -> None:
    out = tmp_path / "w.safetensors"
    result = PortResult.model_validate(
        cli.json(
            "port",
            "--from",
            resnet34_pth,
            "--out",
            out,
            "--stem",
            "cifar",
            "--dataset",
            "cifar100",
            "--conv1-init",
            mode,
        )
    )
    assert result.conv1 == word and result.max_abs_diff <= 1e-6
    model, meta = load_model(out)
    assert meta.stem == "cifar" and meta.num_classes == 100 and meta.conv1 == word
    assert model.conv1.weight.shape == (64, 3, 3, 3)
    source = torch.load(resnet34_pth, weights_only=True)["conv1.weight"]
    if mode == "adapt":
        assert torch.equal(model.conv1.weight, adapt_conv1_kernel(source))
    else:
        assert not torch.allclose(model.conv1.weight, adapt_conv1_kernel(source))


def test_adapted_kernel_keeps_the_response_to_a_flat_patch() -> None:
    flat = torch.full((4, 3, 7, 7), 0.02)
    assert torch.allclose(adapt_conv1_kernel(flat).sum((2, 3)), flat.sum((2, 3)), rtol=1e-5)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 7), torch.linspace(-1, 1, 7), indexing="ij")
    smooth = torch.exp(-(xx**2 + yy**2)).expand(2, 3, 7, 7)
    ratio = adapt_conv1_kernel(smooth).sum((2, 3)) / smooth.sum((2, 3))
    assert torch.allclose(ratio, torch.ones_like(ratio), rtol=0.1)


def test_weights_none_is_loudly_random(cli, tmp_path: Path) -> None:
    out = tmp_path / "r.safetensors"
    result = cli("port", "--weights", "none", "--dataset", "synthetic", "--out", out)
    assert result.exit_code == 0, result.stderr
    assert "NOT PRETRAINED" in result.stderr
    _, meta = load_model(out)
    assert meta.pretrained is False and meta.source_sha256 == "none"
    assert meta.mean == CIFAR_STATS["synthetic"][0]
    assert meta.class_names[0] == "synthetic_0"
    assert "1x1" not in result.stderr  # the defaults do not warn about themselves
    chosen = cli("port", "--weights", "none", "--dataset", "synthetic", "--out", out, "--force", "--image-size", "32")
    assert chosen.exit_code == 0 and "1x1 final feature map" in squash(chosen.stderr)


def test_imagenet_weights_from_the_torch_hub_cache(cli, resnet34_pth: Path, tmp_path: Path) -> None:
    # The real IMAGENET1K_V1 path, offline: torchvision's cache already holds the file.
    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "resnet34-b627a593.pth").write_bytes(resnet34_pth.read_bytes())
    result = PortResult.model_validate(cli.json("port", "--out", tmp_path / "w.safetensors"))
    assert "IMAGENET1K_V1" in result.source and result.pretrained
    assert result.source_sha256 == hashlib.sha256(resnet34_pth.read_bytes()).hexdigest()


def test_offline_download_fails_with_one_clear_line(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from urllib.error import URLError

    def offline(*_args, **_kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    out = tmp_path / "w.safetensors"
    result = cli("port", "--weights", "IMAGENET1K_V1", "--out", out)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "resnet34-b627a593.pth" in lines[0] and "--from FILE.pth" in lines[0]
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints") in lines[0]
    assert not out.exists()


def test_wrapped_and_ddp_prefixed_state_dicts_are_accepted(cli, resnet34_pth: Path, tmp_path: Path) -> None:
    sd = torch.load(resnet34_pth, weights_only=True)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, wrapped)
    assert cli("port", "--from", wrapped, "--out", tmp_path / "w.safetensors").exit_code == 0


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _bad_sources(tmp_path: Path, resnet34_pth: Path, resnet18_pth: Path) -> dict[str, tuple[Path, str]]:
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(resnet34_pth.read_bytes()[:100_000])
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    crafted = tmp_path / "crafted.pth"
    torch.save({"conv1.weight": _Exploit(tmp_path / "pwned")}, crafted)
    return {
        "missing": (tmp_path / "nope.pth", "does not exist"),
        "truncated": (truncated, "not a readable PyTorch checkpoint"),
        "text": (text, "not a readable PyTorch checkpoint"),
        "crafted": (crafted, "not a readable PyTorch checkpoint"),
        "resnet18": (resnet18_pth, "layer1.2.conv1.weight"),
    }


@pytest.mark.parametrize("case", ["missing", "truncated", "text", "crafted", "resnet18"])
def test_bad_source_files(cli, case: str, tmp_path: Path, resnet34_pth: Path, resnet18_pth: Path) -> None:
    source, message = _bad_sources(tmp_path, resnet34_pth, resnet18_pth)[case]
    out = tmp_path / "out.safetensors"
    result = cli("port", "--from", source, "--out", out)
    assert result.exit_code == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and _leftovers(tmp_path) == []
    assert not (tmp_path / "pwned").exists()  # the crafted pickle ran no code


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--num-classes", "0"], 2, "--num-classes"),
        (["--stem", "vit"], 2, "--stem"),
        (["--dataset", "cifar10", "--num-classes", "100"], 2, "cifar10"),
        (["--image-size", "8"], 2, "greater than or equal to 16"),
        (["--weights", "none"], 2, "not both"),
        (["--device", "tpu"], 2, "--device"),
    ],
)
def test_bad_options(cli, resnet34_pth: Path, tmp_path: Path, args: list[str], code: int, message: str) -> None:
    out = tmp_path / "out.safetensors"
    result = cli("port", "--from", resnet34_pth, "--out", out, *args)
    assert result.exit_code == code
    assert message in result.err
    assert not out.exists()


def test_out_directory_must_exist(cli, resnet34_pth: Path, tmp_path: Path) -> None:
    result = cli("port", "--from", resnet34_pth, "--out", tmp_path / "missing" / "w.safetensors")
    assert result.exit_code == 1 and "does not exist" in result.stderr and "mkdir" in result.stderr
    assert not (tmp_path / "missing").exists()


def test_existing_out_is_kept_unless_force(cli, resnet34_pth: Path, tmp_path: Path) -> None:
    out = tmp_path / "w.safetensors"
    out.write_bytes(b"precious")
    result = cli("port", "--from", resnet34_pth, "--out", out)
    assert result.exit_code == 1 and "--force" in result.stderr
    assert out.read_bytes() == b"precious"
    assert cli("port", "--from", resnet34_pth, "--out", out, "--force").exit_code == 0
    assert load_model(out)[1].arch == "resnet34"


def test_failed_parity_writes_nothing(cli, resnet34_pth: Path, tmp_path: Path, monkeypatch) -> None:
    original = port_module.map_torchvision_state_dict

    def broken(*args, **kwargs):
        mapped, actions = original(*args, **kwargs)
        mapped["layer3.0.conv1.weight"] = mapped["layer3.0.conv1.weight"] * 1.01
        return mapped, actions

    monkeypatch.setattr(port_module, "map_torchvision_state_dict", broken)
    out = tmp_path / "w.safetensors"
    result = cli("port", "--from", resnet34_pth, "--out", out)
    assert result.exit_code == 1
    assert "differs from torchvision" in result.stderr and "nothing was written" in result.stderr
    assert not out.exists() and _leftovers(tmp_path) == []


def test_checkpoint_of_wrong_class_count_is_refused(cli, resnet34_pth: Path, tmp_path: Path) -> None:
    from cifar_resnet_cli.core.errors import CheckpointError

    out = tmp_path / "w.safetensors"
    assert cli("port", "--from", resnet34_pth, "--out", out, "--dataset", "cifar100").exit_code == 0
    with pytest.raises(CheckpointError, match="100-class head, but 10 classes"):
        load_model(out, num_classes=10)
