"""An exponential moving average of the weights (Polyak averaging), the way timm's ModelEmaV3 keeps it.

After each optimisation step ``n`` (counted from 0), every floating-point tensor of the model's state
(parameters and BatchNorm statistics) moves towards the model's::

    ema = decay_n * ema + (1 - decay_n) * weights,   decay_n = min(decay, 1 - (1 + n) ** (-2/3))

The warm-up (timm's ``warmup_gamma=1, warmup_power=2/3``) makes the first update a copy (decay 0)
and lets the average forget the random or pretrained start quickly; the decay reaches 0.99 after
about 1,000 steps and 0.999 after about 31,600. Integer buffers (BatchNorm's batch counter) are copied.
The decay is a function of the step number alone, so a resumed run needs only the averaged tensors.
"""

from __future__ import annotations

import copy

import torch

WARMUP_POWER = 2.0 / 3.0


def ema_decay_at(decay: float, step: int) -> float:
    """The decay of the update after optimisation step ``step`` (0 for the first)."""
    return min(decay, 1.0 - (1.0 + step) ** -WARMUP_POWER)


class WeightsEma:
    """The averaged copy of a model, updated in place with fused ``foreach`` operations."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = ema_decay_at(self.decay, step)
        mine, theirs = self.model.state_dict(), model.state_dict()
        floats = [k for k, v in mine.items() if v.is_floating_point()]
        torch._foreach_lerp_([mine[k] for k in floats], [theirs[k].detach() for k in floats], 1.0 - d)
        for k, v in mine.items():
            if not v.is_floating_point():
                v.copy_(theirs[k])

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu").contiguous() for k, v in self.model.state_dict().items()}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(tensors, strict=True)
