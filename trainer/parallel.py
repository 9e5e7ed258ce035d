"""Distributed set-up: the 2-D mesh world = dp x mp, and autograd-aware gathers over the mp group.

Ranks are laid out model-parallel-major: the mp ranks of a pair are consecutive (on one node),
global rank = dp_rank * mp + mp_rank. Gradients are averaged over the dp group only.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipeline.device import resolve_device


@dataclass
class Dist:
    rank: int
    local_rank: int
    world: int
    dp_rank: int
    dp_size: int
    mp_rank: int
    mp_size: int
    device: torch.device
    dp_group: object = None  # None when dp_size == 1 (no communication needed)
    mp_group: object = None  # None when mp_size == 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(mp: int, device: str = "auto") -> Dist:
    """Read torchrun's environment (or run as a single process), pick NCCL on CUDA and gloo on
    the CPU, and build the dp and mp groups."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if mp not in (1, 2):
        raise ValueError(f"mp must be 1 or 2, got {mp}")
    if world % mp:
        raise ValueError(f"world size {world} is not divisible by mp={mp}")
    dev = resolve_device(device, index=local_rank)  # DeviceError (a ValueError) names the fix
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    d = Dist(rank, local_rank, world, rank // mp, world // mp, rank % mp, mp, dev)
    if world > 1:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=10))
        # Every rank must create every group, in the same order.
        for k in range(world // mp):
            ranks = list(range(k * mp, (k + 1) * mp))
            group = dist.new_group(ranks) if mp > 1 else None
            if rank in ranks:
                d.mp_group = group
        for m in range(mp):
            ranks = list(range(m, world, mp))
            group = dist.new_group(ranks) if world // mp > 1 else None
            if rank in ranks:
                d.dp_group = group
    return d


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class _Gather(torch.autograd.Function):
    """All-gather along dim 1 over ``group``. Backward: if the consumers on the ranks differ
    (each computes its own slice of the next layer), a rank's input influenced every rank's
    loss, so its gradient is the sum over ranks; if the consumers are replicated (the same loss
    on every rank), each rank already holds the whole gradient and keeps its own slice."""

    @staticmethod
    def forward(ctx, x, group, replicated):
        ctx.group, ctx.replicated = group, replicated
        ctx.rank, ctx.size = dist.get_rank(group), dist.get_world_size(group)
        parts = [torch.empty_like(x) for _ in range(ctx.size)]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        if not ctx.replicated:
            dist.all_reduce(grad, group=ctx.group)
        return grad.chunk(ctx.size, dim=1)[ctx.rank].contiguous(), None, None


def gather(x: torch.Tensor, group, replicated: bool = False) -> torch.Tensor:
    """Concatenate the mp ranks' ``x`` along dim 1 (channels / features); identity without a group."""
    return x if group is None else _Gather.apply(x, group, replicated)


def all_reduce_sum(t: torch.Tensor, group) -> torch.Tensor:
    if group is not None:
        dist.all_reduce(t, group=group)
    return t
