"""Every training-time augmentation, assembled in one place (torchvision's ``presets.py`` idea).

:class:`TrainTransform` turns a batch of uint8 images into what the model trains on: random crop and
flip, TrivialAugment/RandAugment, normalisation, random erasing, then CutMix/MixUp. Each stage says
whether it is on; the feature cache asks :attr:`TrainTransform.is_identity` instead of reading the
settings, so an augmentation added here can never be skipped by a cached run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core.settings import TrainSettings
from .augment import mix_batch, preprocess, random_crop_flip
from .autoaugment import auto_augment, random_erase


@dataclass(frozen=True)
class Stage:
    """One augmentation: its name, whether the settings switch it on, and what it does with the step's
    generator. Stages that are off draw nothing, so switching one off leaves the others' draws alone."""

    name: str
    on: bool
    apply: Callable[..., object]


class TrainTransform:
    """uint8 images and labels -> (model input, training target), all draws from one generator."""

    def __init__(
        self,
        t: TrainSettings,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        image_size: int,
        num_classes: int,
    ) -> None:
        self.mean, self.std, self.image_size, self.channels_last = mean, std, image_size, bool(t.channels_last)
        self.num_classes = num_classes
        self.on_images = [  # uint8 [N, 3, H, W] -> uint8
            Stage(
                "crop and flip", t.augment, lambda x, g: random_crop_flip(x, g, padding=max(1, round(x.shape[-1] / 8)))
            ),
            Stage(t.auto_augment, t.auto_augment != "none", lambda x, g: auto_augment(x, t.auto_augment, g)),
        ]
        self.on_inputs = [Stage("random erase", t.random_erase > 0, lambda x, g: random_erase(x, t.random_erase, g))]
        self.mix = Stage(
            "cutmix/mixup",
            t.cutmix > 0 or t.mixup > 0,
            lambda x, y, g: mix_batch(x, y, cutmix_alpha=t.cutmix, mixup_alpha=t.mixup, prob=t.mix_prob, generator=g),
        )

    @property
    def stages(self) -> list[Stage]:
        return [*self.on_images, *self.on_inputs, self.mix]

    @property
    def is_identity(self) -> bool:
        """True when every image is always seen as it is: its features can be computed once."""
        return not any(stage.on for stage in self.stages)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for stage in self.on_images:
            if stage.on:
                images = stage.apply(images, generator)
        x = preprocess(images, self.mean, self.std, self.image_size, channels_last=self.channels_last)
        for stage in self.on_inputs:
            if stage.on:
                x = stage.apply(x, generator)
        if not self.mix.on:
            return x, labels
        return self.mix.apply(x, F.one_hot(labels, self.num_classes).float(), generator)


def _padding(images: torch.Tensor) -> int:
    """Random-crop padding: 1/8 of the side (4 px at 32, as the CIFAR papers pad)."""
    return max(1, round(images.shape[-1] / 8))
