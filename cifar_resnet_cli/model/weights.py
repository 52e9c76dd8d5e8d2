"""Our weights files: safetensors with metadata, written atomically, checked on load.

Never pickle: a ``.safetensors`` file holds only tensors and a str -> str header, so loading one
cannot run code. The header carries what a user needs to apply the model (classes, mean/std, input
size) and where the weights came from (source and its sha256).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, Field, ValidationError, field_validator
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .. import __version__
from ..core.errors import CheckpointError
from ..core.fileio import atomic_write_bytes
from .resnet import ResNet, resnet34

FORMAT_VERSION = "2"  # 2: the header carries tensors_sha256, a digest of every tensor
SUPPORTED_FORMATS = ("1", "2")
_SHOW = 6  # how many differing keys an error message names


class WeightsMeta(BaseModel):
    """The header of one of our ``.safetensors`` files (stored as str -> str)."""

    format_version: str = FORMAT_VERSION
    arch: Literal["resnet34"] = "resnet34"
    stem: Literal["imagenet", "cifar"]
    num_classes: int = Field(ge=2, le=100_000)
    class_names: list[str]
    dataset: str
    # Per-channel statistics of pixels scaled to [0, 1]: a mean outside [0, 1] or a std of 0 (or below
    # 1/1000, which would multiply inputs by more than 1000) is damage, not a preprocessing choice.
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int = Field(ge=16, le=512)  # the range --image-size accepts
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
    val_split: str | None = None  # stratified or random; None on files from before it was recorded: random
    synthetic_size: int | None = None
    run: str | None = None
    tensors_sha256: str | None = None  # see tensor_digest; set by weights_bytes, checked by parse_weights

    @field_validator("mean")
    @classmethod
    def _mean_in_range(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(math.isfinite(x) and 0 <= x <= 1 for x in v):
            raise ValueError(f"mean {list(v)} must lie in [0, 1] (pixels are scaled to [0, 1])")
        return v

    @field_validator("std")
    @classmethod
    def _std_in_range(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(math.isfinite(x) and 1e-3 <= x <= 1 for x in v):
            raise ValueError(f"std {list(v)} must lie in [0.001, 1]")
        return v

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
        if header["format_version"] != "1" and "tensors_sha256" not in header:
            raise CheckpointError(f"{path} is damaged: its header lacks the tensors_sha256 digest")
        if header["arch"] != "resnet34":
            raise CheckpointError(f"{path} holds a {header['arch']}, not a resnet34")
        values: dict[str, object] = {}
        for name, field in cls.model_fields.items():
            if name not in header:
                continue
            raw = header[name]
            if field.annotation is str:
                values[name] = raw
            elif field.annotation == (str | None):  # stored as the string itself, or "null"
                values[name] = None if raw == "null" else raw
            else:
                values[name] = _json_or_raw(raw)
        return cls.checked(values, path)

    @classmethod
    def checked(cls, values: Mapping[str, object], path: Path) -> WeightsMeta:
        """Validated metadata, or a CheckpointError naming the file and every field out of range."""
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


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order.

    Stored in the header and checked on load: a flipped bit, a NaN written over a weight or a
    truncated tensor changes it, and the file is refused instead of scoring 0% or nan%.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def weights_bytes(state_dict: Mapping[str, torch.Tensor], meta: WeightsMeta) -> bytes:
    """Serialise tensors (moved to CPU, contiguous) and metadata, with the tensors' digest, to
    safetensors bytes. Non-finite weights are never written."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    bad = nonfinite_tensors(tensors)
    if bad:
        raise CheckpointError(f"refusing to save non-finite weights ({len(bad)} tensors: {_names(bad)})")
    meta = meta.model_copy(update={"tensors_sha256": tensor_digest(tensors)})
    return st_save(tensors, metadata=meta.to_header())


def save_weights(path: Path, state_dict: Mapping[str, torch.Tensor], meta: WeightsMeta) -> None:
    """Write tensors and metadata to ``path`` atomically (temporary file, fsync, rename)."""
    atomic_write_bytes(path, weights_bytes(state_dict, meta))


def check_tensors(tensors: Mapping[str, torch.Tensor], expected_digest: str | None, path: Path) -> None:
    """Refuse tensors whose digest differs from the stored one, or that are not finite."""
    if expected_digest is not None and tensor_digest(tensors) != expected_digest:
        raise CheckpointError(
            f"{path} is damaged: its tensors do not match the sha256 digest stored in its header",
            "the file was corrupted on disk or in transfer; use another copy or re-create it",
        )
    bad = nonfinite_tensors(tensors)
    if bad:
        raise CheckpointError(
            f"{path} holds non-finite weights ({len(bad)} tensors: {_names(bad)})",
            "it comes from a diverged or damaged run; use an earlier checkpoint",
        )


def parse_weights(data: bytes, path: Path) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    """Tensors and checked metadata from the bytes of a safetensors file (``path`` for messages):
    the header's fields in range, the tensors' digest right, every weight finite."""
    try:
        tensors = st_load(data)
        header = _read_header(data)
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc})",
            "pass a .safetensors file written by `cifar-resnet port` or `train`",
        ) from None
    meta = WeightsMeta.from_header(header, path)
    check_tensors(tensors, meta.tensors_sha256, path)
    return tensors, meta


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
