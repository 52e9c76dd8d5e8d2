"""Imbalanced classes: the training split's class counts, balanced loss weights, balanced epochs.

``--class-weights balanced`` weighs class c by n / (k * n_c) (scikit-learn's "balanced": k classes
present, n images), so each class carries the same total weight and the weights average 1 over the
training images (the loss keeps its scale). ``--sampler balanced`` draws each epoch's images with
replacement, every class equally likely, as many as the split holds: a function of (seed, epoch), so
every rank and every resume draws the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

IMBALANCE_WARNING = 5.0  # largest class over smallest above this: say so


def class_counts(labels: torch.Tensor, num_classes: int) -> list[int]:
    return torch.bincount(labels.cpu(), minlength=num_classes).tolist()


def balanced_weights(counts: Sequence[int]) -> torch.Tensor:
    """n / (k * n_c) for the k classes with images; 0 for a class without (it has nothing to weigh)."""
    n, present = sum(counts), sum(1 for c in counts if c > 0)
    return torch.tensor([n / (present * c) if c > 0 else 0.0 for c in counts], dtype=torch.float32)


def balanced_draw(labels: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
    """Epoch ``epoch``'s images: ``len(labels)`` draws with replacement, each class equally likely."""
    labels = labels.cpu()
    counts = torch.bincount(labels).double()
    chance = 1.0 / counts[labels]
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7_919)
    return torch.multinomial(chance, len(labels), replacement=True, generator=generator)


def imbalance_note(counts: Sequence[int], names: Sequence[str]) -> str | None:
    """A warning when the largest class has over 5x the images of the smallest (or a class has none)."""
    if not counts:
        return None
    big = max(range(len(counts)), key=lambda c: counts[c])
    small = min(range(len(counts)), key=lambda c: counts[c])
    if counts[small] * IMBALANCE_WARNING >= counts[big]:
        return None
    ratio = "no" if counts[small] == 0 else f"{counts[big] / counts[small]:.1f}x fewer"
    return (
        f"imbalanced classes: {names[small]} has {counts[small]} training images, {ratio} than {names[big]} "
        f"({counts[big]}); consider --class-weights balanced or --sampler balanced, and eval's balanced accuracy"
    )


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of epoch ``epoch``: the same on every rank, and after a resume."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def step_generator(seed: int, global_step: int, rank: int) -> torch.Generator:
    """The augmentation RNG of one step on one rank: reproducible without saved state."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + global_step) * 8_191 + rank) % 2**63)
