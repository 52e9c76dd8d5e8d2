"""``port``: torchvision ResNet34 weights -> one verified ``.safetensors`` file of ours.

The mapping is a small pure function (:func:`map_torchvision_state_dict`): names are identical,
so every backbone tensor is copied; the head is replaced for 10 or 100 classes; with the ``cifar``
stem, the 7x7 ``conv1`` kernel is resampled to 3x3 or re-initialised. Before anything is written,
the backbone's features are compared with torchvision's own model holding the source weights, and
the serialised bytes are loaded back into a fresh model and compared with the in-memory one.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
import torchvision
from pydantic import BaseModel

from ..core.devices import device_description, resolve_device
from ..core.errors import CheckpointError, DownloadError, VerificationError
from ..core.fileio import atomic_write_bytes, check_writable, sha256_file
from ..core.kinds import CIFAR_STATS, IMAGENET_MEAN, IMAGENET_STD, class_names
from ..core.settings import Settings
from .inspection import PARITY_TOLERANCE, ParityRow, compare_outputs, torchvision_reference
from .resnet import resnet34
from .weights import WeightsMeta, model_from_tensors, parse_weights, state_dict_differences, weights_bytes

Action = Literal["copied", "replaced", "adapted", "reinitialised"]


class TensorAction(BaseModel):
    name: str
    action: Action
    source_shape: list[int] | None
    target_shape: list[int]


class PortResult(BaseModel):
    out: str
    source: str
    source_sha256: str
    pretrained: bool
    dataset: str
    stem: str
    num_classes: int
    image_size: int
    conv1: str
    device: str
    copied: int
    changed: list[TensorAction]
    output_sha256: str
    output_bytes: int
    parity: list[ParityRow]
    max_abs_diff: float
    tolerance: float = PARITY_TOLERANCE
    roundtrip_max_abs_diff: float
    warnings: list[str]


class _Source(BaseModel, arbitrary_types_allowed=True):
    state_dict: dict[str, torch.Tensor]
    description: str
    sha256: str
    pretrained: bool


def adapt_conv1_kernel(weight: torch.Tensor, size: int = 3) -> torch.Tensor:
    """Resample ``conv1`` filters (out, 3, 7, 7) to (out, 3, size, size).

    Antialiased bilinear resampling keeps each filter's shape at the smaller scale; it averages, so
    the result is scaled by (7*7)/(size*size) to keep each filter's response to a flat patch (its
    sum) about the same, as the following BatchNorm statistics expect.
    """
    k = weight.shape[-1]
    resized = F.interpolate(weight.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (resized * (k * k) / (size * size)).to(weight.dtype)


def map_torchvision_state_dict(
    source: Mapping[str, torch.Tensor],
    *,
    stem: str,
    num_classes: int,
    conv1_init: str,
    generator: torch.Generator,
) -> tuple[dict[str, torch.Tensor], list[TensorAction]]:
    """Map a torchvision ResNet34 state dict onto our model's names and shapes."""
    target = resnet34(num_classes=num_classes, stem=stem).state_dict()
    out: dict[str, torch.Tensor] = {}
    actions: list[TensorAction] = []
    for name, like in target.items():
        src = source[name]
        shape = list(like.shape)
        if name.startswith("fc.") and src.shape != like.shape:
            # New head, nn.Linear's default init: U(-1/sqrt(512), 1/sqrt(512)).
            bound = 1.0 / like.shape[-1] ** 0.5 if name == "fc.weight" else 1.0 / target["fc.weight"].shape[1] ** 0.5
            value = torch.empty(like.shape).uniform_(-bound, bound, generator=generator)
            actions.append(TensorAction(name=name, action="replaced", source_shape=list(src.shape), target_shape=shape))
        elif name == "conv1.weight" and src.shape != like.shape:
            if conv1_init == "adapt":
                value = adapt_conv1_kernel(src, like.shape[-1])
                action: Action = "adapted"
            else:
                # torchvision's conv init: He-normal, fan_out, ReLU gain.
                fan_out = like.shape[0] * like.shape[2] * like.shape[3]
                value = torch.randn(like.shape, generator=generator) * (2.0 / fan_out) ** 0.5
                action = "reinitialised"
            actions.append(TensorAction(name=name, action=action, source_shape=list(src.shape), target_shape=shape))
        else:
            value = src
        out[name] = value.detach().to(dtype=like.dtype).clone()
    return out, actions


def read_torchvision_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth`` file, read with ``weights_only=True`` (no code runs)."""
    if not path.is_file():
        raise CheckpointError(f"--from file {path} does not exist", "check the path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a bad file; all mean the same here
        text = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else ""
        reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({reason})",
            "pass a .pth file saved with torch.save(model.state_dict(), path)",
        ) from None
    for key in ("state_dict", "model"):  # common wrappers around a state dict
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state dict of tensors",
            "save the model with torch.save(model.state_dict(), path)",
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _download_imagenet(weights: str) -> _Source:
    try:
        enum = torchvision.models.ResNet34_Weights[weights]
    except KeyError:
        names = ", ".join(w.name for w in torchvision.models.ResNet34_Weights)
        raise CheckpointError(f"unknown --weights {weights!r}", f"choose {names} or none") from None
    file_name = Path(enum.url).name
    cached = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    if not cached.is_file():
        match = torch.hub.HASH_REGEX.search(file_name)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            # torch.hub's own downloader: temporary file, sha256-prefix check, rename.
            # Its progress bar goes to stderr, and only to a terminal.
            prefix = match.group(1) if match else None
            torch.hub.download_url_to_file(enum.url, str(cached), prefix, progress=sys.stderr.isatty())
        except Exception as exc:  # URLError, HTTPError, socket errors, hash mismatch, read-only cache
            raise DownloadError(
                f"could not download ResNet34_Weights.{weights} from {enum.url} ({exc})",
                f"offline, put {file_name} into {cached.parent}/ (torchvision's cache), "
                "or use --from FILE.pth, which works offline",
            ) from None
    state_dict = read_torchvision_checkpoint(cached)
    return _Source(
        state_dict=state_dict,
        description=f"torchvision ResNet34_Weights.{weights} ({file_name})",
        sha256=sha256_file(cached),
        pretrained=True,
    )


def _random_source(seed: int) -> _Source:
    torch.manual_seed(seed)
    model = torchvision.models.resnet34(weights=None)
    return _Source(
        state_dict=model.state_dict(),
        description=f"random initialisation (torchvision resnet34, seed {seed}): NOT PRETRAINED",
        sha256="none",
        pretrained=False,
    )


def _check_source(state_dict: Mapping[str, torch.Tensor], description: str) -> int:
    """Refuse anything but a torchvision ResNet34 state dict; returns its head's class count."""
    fc = state_dict.get("fc.weight")
    classes = fc.shape[0] if isinstance(fc, torch.Tensor) and fc.ndim == 2 else 1000
    expected = {k: v.shape for k, v in torchvision.models.resnet34(num_classes=classes).state_dict().items()}
    problems = state_dict_differences(expected, state_dict)
    if problems:
        raise CheckpointError(
            f"{description} is not a torchvision ResNet34 state dict: " + "; ".join(problems),
            "pass torchvision.models.resnet34's state dict",
        )
    return classes


def port_weights(
    settings: Settings, *, out: Path, weights: str | None = None, from_file: Path | None = None, force: bool = False
) -> PortResult:
    """Port torchvision ResNet34 weights (download, file or none) to a verified safetensors file."""
    if (weights is None) == (from_file is None):
        raise CheckpointError("give exactly one source: --weights NAME|none or --from FILE.pth")
    check_writable(out, force=force, what="--out file")
    device = resolve_device(settings.device)
    seed = settings.train.seed
    stem, num_classes, dataset = settings.model.stem, settings.num_classes, settings.data.dataset
    source = _source(weights, from_file, seed)
    source_classes = _check_source(source.state_dict, source.description)
    source_sd = {k: (v.float() if v.is_floating_point() else v) for k, v in source.state_dict.items()}
    mapped, changed = map_torchvision_state_dict(
        source_sd,
        stem=stem,
        num_classes=num_classes,
        conv1_init=settings.model.conv1_init,
        generator=torch.Generator().manual_seed(seed),
    )
    conv1 = next((a.action for a in changed if a.name == "conv1.weight"), "copied")
    meta = _meta(settings, source, conv1)
    model = resnet34(num_classes=num_classes, stem=stem)
    model.load_state_dict(mapped)
    size = settings.model.image_size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(device)
    parity = _check_parity(model.to(device), source_sd, mapped, source_classes, stem, x)
    data, roundtrip = _checked_bytes(model, mapped, meta, out, x)
    atomic_write_bytes(out, data)
    return PortResult(
        out=str(out),
        source=source.description,
        source_sha256=source.sha256,
        pretrained=source.pretrained,
        dataset=dataset,
        stem=stem,
        num_classes=num_classes,
        image_size=size,
        conv1=conv1,
        device=device_description(device),
        copied=len(mapped) - len(changed),
        changed=changed,
        output_sha256=hashlib.sha256(data).hexdigest(),
        output_bytes=len(data),
        parity=parity,
        max_abs_diff=max(p.max_abs_diff for p in parity),
        roundtrip_max_abs_diff=roundtrip,
        warnings=_warnings(settings, source, parity),
    )


def _source(weights: str | None, from_file: Path | None, seed: int) -> _Source:
    """The torchvision weights to port: a local .pth, random (``none``), or the download."""
    if from_file is not None:
        return _Source(
            state_dict=read_torchvision_checkpoint(from_file),
            description=str(from_file),
            sha256=sha256_file(from_file),
            pretrained=True,
        )
    if weights is not None and weights.lower() == "none":
        return _random_source(seed)
    return _download_imagenet(str(weights))


def _meta(settings: Settings, source: _Source, conv1: str) -> WeightsMeta:
    """The file's metadata: classes and normalisation of the data set (ImageNet's for pretrained weights)."""
    dataset, num_classes = settings.data.dataset, settings.num_classes
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if source.pretrained else CIFAR_STATS[dataset]
    return WeightsMeta(
        stem=settings.model.stem,
        num_classes=num_classes,
        class_names=list(class_names(dataset, num_classes)),
        dataset=dataset,
        mean=mean,
        std=std,
        image_size=settings.model.image_size,
        pretrained=source.pretrained,
        source=source.description,
        source_sha256=source.sha256,
        conv1=conv1,
    )


def _check_parity(model, source_sd: dict, mapped: dict, source_classes: int, stem: str, x: torch.Tensor) -> list:
    """The backbone against torchvision's own model holding the source weights (with the cifar stem, the
    reference gets the same 3x3 conv1 we made; all else is the source's)."""
    reference = torchvision_reference(stem, source_classes)
    reference.load_state_dict({**source_sd, "conv1.weight": mapped["conv1.weight"]})
    parity = compare_outputs(model, reference.to(x.device), x, logits=False)
    worst = max(parity, key=lambda p: p.max_abs_diff)
    if worst.max_abs_diff > PARITY_TOLERANCE:
        raise VerificationError(
            f"ported backbone differs from torchvision by {worst.max_abs_diff:.3g} at {worst.name} "
            f"(tolerance {PARITY_TOLERANCE:g}); nothing was written",
            "this is a bug in the weight mapping: please report it with the source file",
        )
    return parity


def _checked_bytes(model, mapped: dict, meta: WeightsMeta, out: Path, x: torch.Tensor) -> tuple[bytes, float]:
    """Serialise, load the bytes back into a fresh model and compare logits: the bytes, once they match."""
    data = weights_bytes(mapped, meta)
    tensors, meta_back = parse_weights(data, out)
    fresh = model_from_tensors(tensors, meta_back, out).to(x.device).eval()
    with torch.inference_mode():
        roundtrip = float((fresh(x) - model.eval()(x)).abs().max())
    if roundtrip != 0.0 or meta_back.model_copy(update={"tensors_sha256": None}) != meta:
        raise VerificationError(
            f"the safetensors round trip changed the model (max |diff| {roundtrip:.3g}); nothing was written"
        )
    return data, roundtrip


def _warnings(settings: Settings, source: _Source, parity: list) -> list[str]:
    warnings = []
    if not source.pretrained:
        warnings.append("--weights none: these weights are RANDOM, NOT PRETRAINED; use them only for tests and demos")
    # The defaults (imagenet stem, 32 px) are the documented main path and stay quiet; a size or stem
    # the user chose that leaves layer4 (parity[-2]) at 1x1 is worth a word.
    chosen = settings.model.model_fields_set & {"stem", "image_size"}
    if chosen and settings.model.stem == "imagenet" and parity[-2].shape[-1] == 1:
        warnings.append(
            f"at {settings.model.image_size} px the imagenet stem leaves a 1x1 final feature map; consider "
            "--stem cifar or a larger --image-size for transfer"
        )
    return warnings
