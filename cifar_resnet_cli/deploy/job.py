"""What every archive of one export shares: the deployed form of the model, the verification batch and
its eager reference, the tolerances, and (int8) the calibration and held-out images."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from .. import __version__
from ..core.errors import OutputError
from ..data.augment import preprocess
from ..model.weights import WeightsMeta

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Deployed(nn.Module):
    """The model as deployed: float32 NCHW in, float32 logits out; inside, any dtype and layout.

    Casting the weights (not autocast) keeps every variant a plain graph that TorchScript can
    freeze and that a user can call without knowing how it was built.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32, channels_last: bool = False) -> None:
        super().__init__()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(dtype=dtype, memory_format=fmt).eval()
        self.dtype = dtype
        self.channels_last = channels_last

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x).float()


DEFAULT_TOLERANCES = {"fp32": (1e-4, 1.0), "bf16": (5e-2, 0.9), "fp16": (5e-2, 0.9), "int8": (0.1, 0.95)}


def tolerances(dtype: str, atol: float | None, min_agreement: float | None) -> tuple[float, float]:
    """Defaults: fp32 must match to 1e-4 (relative to the largest logit above 1) and agree on every
    top-1; bf16/fp16 keep about 3 significant digits, so 5e-2 and 90% agreement. int8 (256 levels per
    tensor) is judged on real held-out images: 95% top-1 agreement wherever the fp32 margin exceeds a
    fifth of the largest logit, and the accuracy drop (``--max-accuracy-drop``); its max |diff| is reported."""
    default_atol, default_agreement = DEFAULT_TOLERANCES[dtype]
    return (
        atol if atol is not None else default_atol,
        min_agreement if min_agreement is not None else default_agreement,
    )


class Agreement(BaseModel):
    """A variant's logits against eager fp32 on the same batch."""

    max_abs_diff: float
    scale: float  # the largest |eager logit|, at least 1: tolerances are relative to it
    top1_agreement: float  # over every image
    decisive_images: int  # images whose eager top-1 beats top-2 by more than twice the allowed error
    decisive_agreement: float  # top-1 agreement over those
    images: int
    allowed: float  # atol x scale

    def ok(self, min_agreement: float, *, check_diff: bool = True) -> bool:
        """Within tolerance everywhere, and the same top-1 wherever the eager margin exceeds twice the
        allowed error (two logits closer than that may swap under reduced precision; others may not).
        ``check_diff=False`` (int8, whose error has no a-priori bound) judges the agreement only."""
        within = self.max_abs_diff <= self.allowed or not check_diff
        return within and self.decisive_agreement >= min_agreement


@torch.inference_mode()
def compare(candidate: nn.Module, reference: Tensor, x: Tensor, atol: float) -> Agreement:
    return compare_outputs(candidate(x).float(), reference, atol)


def compare_outputs(out: Tensor, reference: Tensor, atol: float) -> Agreement:
    """Logits against the eager fp32 logits of the same images."""
    scale = max(1.0, float(reference.abs().max()))
    same = out.argmax(1) == reference.argmax(1)
    top2 = reference.topk(min(2, reference.shape[1]), dim=1).values
    margin = top2[:, 0] - top2[:, -1]
    decisive = margin > 2 * atol * scale
    return Agreement(
        max_abs_diff=float((out - reference).abs().max()),
        scale=scale,
        top1_agreement=float(same.float().mean()),
        decisive_images=int(decisive.sum()),
        decisive_agreement=float(same[decisive].float().mean()) if bool(decisive.any()) else 1.0,
        images=len(out),
        allowed=atol * scale,
    )


@dataclass(frozen=True)
class HeldOutImages:
    """The validation split as it is stored (uint8), preprocessed one batch at a time: 5,000 images at
    224 px are 3 GB as float32 and 0.75 GB as they are."""

    images: Tensor
    labels: Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int

    def subset(self, index: Tensor) -> HeldOutImages:
        return HeldOutImages(self.images[index], self.labels[index], self.mean, self.std, self.image_size)

    def batches(self, size: int = 256) -> Iterator[Tensor]:
        for i in range(0, len(self.images), size):
            yield preprocess(self.images[i : i + size], self.mean, self.std, self.image_size)


@dataclass
class ExportJob:
    """What every archive of one export shares: the model, the inputs, the reference and the settings."""

    model: nn.Module
    meta: WeightsMeta
    ckpt_sha: str
    device: torch.device
    dtype: str
    channels_last: bool
    example: Tensor
    x: Tensor
    reference: Tensor
    atol: float
    min_agreement: float
    max_drop: float  # int8: allowed top-1 loss on the held-out images, in points
    weight_rounding: str  # int8: gptq or nearest
    max_float_layers: int  # int8: layers the fallback may keep in float (0: none, refuse instead)
    data_settings: dict  # the data folder and download choice, recorded in the archive for eval
    onnx_runtime: str  # what loads ONNX files back and scores int8: onnxruntime or openvino
    calibration: list[Tensor] | None = None  # int8: preprocessed training batches
    held_out: HeldOutImages | None = None  # int8: the validation images and labels
    held_out_logits: Tensor | None = None  # int8: the fp32 model's logits on them, computed once


def archive_metadata(
    meta: WeightsMeta,
    *,
    method: str,
    dtype: str,
    channels_last: bool,
    checkpoint_sha256: str,
    device: torch.device,
    held_out: BaseModel | None = None,
    data_settings: dict | None = None,
) -> str:
    """``data_settings``: where the checkpoint's data lives (``data_dir``, ``download``), so that ``eval``
    finds it for an archive kept outside the run folder."""
    data = meta.model_dump(mode="json")
    data.update(
        {
            "export_method": method,
            "export_dtype": dtype,
            "export_channels_last": channels_last,
            "export_device": device.type if method == "aoti" else "any",
            "exported_from_sha256": checkpoint_sha256,
            "export_torch_version": torch.__version__,
            "export_package_version": __version__,
            "input": "float32 [N, 3, image_size, image_size], RGB in [0, 1], then (x - mean) / std",
        }
    )
    if held_out is not None:
        data["int8_held_out"] = held_out.model_dump()
    if data_settings:
        data["data"] = data_settings
    return json.dumps(data, indent=2)


def write_error(exc: Exception, target: Path) -> OutputError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return OutputError(f"cannot write {target}: {reason}", "check free disk space and that the folder is writable")


def job_metadata(job: ExportJob, method: str, held_out: BaseModel | None = None) -> str:
    """The metadata an archive of this job carries (``held_out``: an int8 file's score)."""
    return archive_metadata(
        job.meta,
        method=method,
        dtype=job.dtype,
        channels_last=job.channels_last,
        checkpoint_sha256=job.ckpt_sha,
        device=job.device,
        held_out=held_out,
        data_settings=job.data_settings,
    )
