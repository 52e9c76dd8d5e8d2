"""cifar-resnet: transfer learning with a torchvision-exact ResNet34 on CIFAR-10 and CIFAR-100."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "CifarResnetError",
    "Settings",
    "__version__",
    "build_model",
    "freeze_backbone",
    "load_model",
    "load_settings",
    "replace_head",
    "resnet34",
]


def __getattr__(name: str):  # lazy: `cifar-resnet --version` should not import torch
    if name in {"resnet34", "freeze_backbone", "replace_head", "unfreeze_backbone"}:
        from .model import resnet as model

        return getattr(model, name)
    if name == "build_model":
        from .model.resnet import resnet34

        return resnet34
    if name in {"Settings", "load_settings"}:
        from .core import settings

        return getattr(settings, name)
    if name == "load_model":
        from .model.weights import load_model

        return load_model
    if name == "CifarResnetError":
        from .core.errors import CifarResnetError

        return CifarResnetError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
