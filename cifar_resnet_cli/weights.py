"""Our weights files: safetensors with metadata, written atomically, checked on load.

Never pickle: a ``.safetensors`` file holds only tensors and a str -> str header, so loading one
cannot run code. The header carries what a user needs to apply the model (classes, mean/std, input
size) and where the weights came from (source and its sha256).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from . import __version__
from .errors import CheckpointError
from .fileio import atomic_write_bytes
from .model import ResNet, resnet34

FORMAT_VERSION = "1"
SUPPORTED_FORMATS = ("1",)
_SHOW = 6  # how many differing keys an error message names


class WeightsMeta(BaseModel):
    """The header of one of our ``.safetensors`` files (stored as str -> str)."""

    format_version: str = FORMAT_VERSION
    arch: Literal["resnet34"] = "resnet34"
    stem: Literal["imagenet", "cifar"]
    num_classes: int
    class_names: list[str]
    dataset: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    pretrained: bool
    source: str
    source_sha256: str
    conv1: str = "copied"
    package_version: str = __version__
    # Set on trained checkpoints: how far training went and which split selected them.
    trained_epochs: int | None = None
    trained_steps: int | None = None
    val_size: int | None = None
    split_seed: int | None = None
    synthetic_size: int | None = None
    run: str | None = None

    def to_header(self) -> dict[str, str]:
        """Flatten to safetensors' str -> str metadata; lists and tuples as JSON."""
        out = {}
        for key, value in self.model_dump().items():
            out[key] = value if isinstance(value, str) else json.dumps(value)
        return out

    @classmethod
    def from_header(cls, header: Mapping[str, str], path: Path) -> WeightsMeta:
        missing = [k for k in ("format_version", "arch") if k not in header]
        if missing:
            raise CheckpointError(
                f"{path} is a safetensors file but not one of ours: its metadata lacks {', '.join(missing)}",
                "make one with `cifar-resnet port` or `cifar-resnet train`",
            )
        if header["format_version"] not in SUPPORTED_FORMATS:
            raise CheckpointError(
                f"{path} has format_version {header['format_version']}, this version reads "
                f"{', '.join(SUPPORTED_FORMATS)}",
                "upgrade cifar-resnet",
            )
        if header["arch"] != "resnet34":
            raise CheckpointError(f"{path} holds a {header['arch']}, not a resnet34")
        values: dict[str, object] = {}
        for name, field in cls.model_fields.items():
            if name not in header:
                continue
            raw = header[name]
            values[name] = raw if field.annotation is str else _json_or_raw(raw)
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise CheckpointError(f"{path} has invalid metadata: {problems}") from None


def _json_or_raw(raw: str) -> object:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f" and {len(keys) - _SHOW} more" if len(keys) > _SHOW else "")


def state_dict_differences(
    expected: Mapping[str, torch.Size | tuple[int, ...]], actual: Mapping[str, torch.Tensor]
) -> list[str]:
    """What differs between the expected names/shapes and a state dict, as readable phrases."""
    missing = [k for k in expected if k not in actual]
    unexpected = [k for k in actual if k not in expected]
    mismatched = [
        f"{k} {tuple(actual[k].shape)} != {tuple(expected[k])}"
        for k in expected
        if k in actual and tuple(actual[k].shape) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensors ({_names(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors ({_names(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} shapes differ ({_names(mismatched)})")
    return problems


def weights_bytes(state_dict: Mapping[str, torch.Tensor], meta: WeightsMeta) -> bytes:
    """Serialise tensors (moved to CPU, contiguous) and metadata to safetensors bytes."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    return st_save(tensors, metadata=meta.to_header())


def save_weights(path: Path, state_dict: Mapping[str, torch.Tensor], meta: WeightsMeta) -> None:
    """Write tensors and metadata to ``path`` atomically (temporary file, fsync, rename)."""
    atomic_write_bytes(path, weights_bytes(state_dict, meta))


def parse_weights(data: bytes, path: Path) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    """Tensors and checked metadata from the bytes of a safetensors file (``path`` for messages)."""
    try:
        tensors = st_load(data)
        header = _read_header(data)
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc})",
            "pass a .safetensors file written by `cifar-resnet port` or `train`",
        ) from None
    return tensors, WeightsMeta.from_header(header, path)


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    """Read one of our safetensors files: tensors on CPU and checked metadata."""
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist", "check the path")
    return parse_weights(path.read_bytes(), path)


def _read_header(data: bytes) -> dict[str, str]:
    # safetensors layout: 8-byte little-endian header length, then a JSON header.
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n].decode("utf-8")).get("__metadata__") or {}


def model_from_tensors(
    tensors: Mapping[str, torch.Tensor], meta: WeightsMeta, path: Path, *, num_classes: int | None = None
) -> ResNet:
    """Build the ResNet34 that ``meta`` describes and load ``tensors``, checking names and shapes.

    With ``num_classes``, weights with another class count are refused with both numbers named.
    """
    if num_classes is not None and meta.num_classes != num_classes:
        raise CheckpointError(
            f"{path} has a {meta.num_classes}-class head, but {num_classes} classes are expected",
            "use weights made for this dataset, or port/train new ones",
        )
    if len(meta.class_names) != meta.num_classes:
        raise CheckpointError(f"{path} names {len(meta.class_names)} classes but its head has {meta.num_classes}")
    model = resnet34(num_classes=meta.num_classes, stem=meta.stem)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    problems = state_dict_differences(expected, tensors)
    if problems:
        raise CheckpointError(
            f"{path} does not match a {meta.stem}-stem ResNet34 with {meta.num_classes} classes: " + "; ".join(problems)
        )
    model.load_state_dict(tensors)
    return model


def load_model(path: Path, *, num_classes: int | None = None) -> tuple[ResNet, WeightsMeta]:
    """Read one of our weights files into a ResNet34 (see :func:`model_from_tensors`)."""
    tensors, meta = read_weights(path)
    return model_from_tensors(tensors, meta, path, num_classes=num_classes), meta
