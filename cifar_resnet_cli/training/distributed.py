"""Training on several processes, launched by PyTorch's own ``torchrun``.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`setup` turns them into a
process group (``nccl`` on CUDA, ``gloo`` on the CPU) with a timeout, so that a rank that dies
brings the others down with a message instead of a hang. Helpers reduce metrics over all ranks.

``SyncBatchNorm`` here is our own, because ``torch.nn.SyncBatchNorm`` runs on GPUs only: it
normalises with the mean and variance of the global batch (sums all-reduced across ranks) and
back-propagates through them exactly, so that N processes compute what one process would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..core.errors import CifarResnetError


class DistributedError(CifarResnetError):
    pass


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device, timeout_s: float) -> tuple[DistContext, torch.device]:
    """Join the process group torchrun prepared; place this rank on its own device."""
    if not launched_by_torchrun():
        return DistContext(), device
    try:
        rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    except (KeyError, ValueError):
        raise DistributedError("WORLD_SIZE is set but RANK/LOCAL_RANK are not", "launch with torchrun") from None
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise DistributedError(
                f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs here",
                "use --nproc-per-node at most the number of GPUs",
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise DistributedError(f"distributed training on {device.type} is not supported", "use cuda or cpu")
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend, timeout=timedelta(seconds=timeout_s), device_id=device if device.type == "cuda" else None
        )
    return DistContext(rank, world, local), device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: Tensor, ctx: DistContext) -> Tensor:
    """Sum over ranks (in place on a copy); identity on one process."""
    if not ctx.enabled:
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def broadcast_object(obj, ctx: DistContext):
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


class _SyncBatchNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float):
        dims = [0, 2, 3]
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64, device=x.device)
        stats = torch.cat([count, x.double().sum(dims), (x.double() ** 2).sum(dims)])
        dist.all_reduce(stats, op=dist.ReduceOp.SUM)
        c = x.shape[1]
        n = stats[0]
        mean = stats[1 : 1 + c] / n
        var = (stats[1 + c :] / n - mean**2).clamp_min(0)  # biased, as BatchNorm normalises
        invstd = (var + eps).rsqrt()
        xhat = (x - mean.to(x.dtype).view(1, -1, 1, 1)) * invstd.to(x.dtype).view(1, -1, 1, 1)
        ctx.save_for_backward(xhat, weight, invstd.to(x.dtype))
        ctx.n = float(n)
        return xhat * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1), mean.to(x.dtype), var.to(x.dtype), n

    @staticmethod
    def backward(ctx, grad_out: Tensor, _gm, _gv, _gn):
        xhat, weight, invstd = ctx.saved_tensors
        dims = [0, 2, 3]
        sums = torch.cat([grad_out.sum(dims), (grad_out * xhat).sum(dims)]).double()
        local_bias, local_weight = sums[: xhat.shape[1]].to(grad_out.dtype), sums[xhat.shape[1] :].to(grad_out.dtype)
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)  # global sums of g and g * xhat
        c = xhat.shape[1]
        mean_g = (sums[:c] / ctx.n).to(grad_out.dtype).view(1, -1, 1, 1)
        mean_gx = (sums[c:] / ctx.n).to(grad_out.dtype).view(1, -1, 1, 1)
        grad_x = (weight * invstd).view(1, -1, 1, 1) * (grad_out - mean_g - xhat * mean_gx)
        # Parameter gradients stay local: DistributedDataParallel averages them over the ranks.
        return grad_x, local_weight, local_bias, None


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d over the global batch of all ranks, on any device (gloo or nccl).

    On one process, or in eval mode, it is exactly ``nn.BatchNorm2d``. Running statistics are
    updated with the global mean and the unbiased global variance, as BatchNorm does.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        out, mean, var, n = _SyncBatchNormFn.apply(x, self.weight, self.bias, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / max(n - 1, 1))
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach().to(self.running_var.dtype), alpha=m)
        return out


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Swap every trainable BatchNorm2d for :class:`SyncBatchNorm2d`, keeping names and state."""
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = SyncBatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            sync.load_state_dict(child.state_dict())
            sync.to(child.weight.device)
            sync.train(child.training)
            setattr(model, name, sync)
        else:
            convert_sync_batchnorm(child)
    return model
