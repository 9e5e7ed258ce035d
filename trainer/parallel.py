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
from pipeline.errors import UsageError


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
        raise UsageError(f"mp must be 1 or 2, got {mp}")
    if world % mp:
        raise UsageError(f"world size {world} is not divisible by mp={mp}")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    on_gpus = str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if on_gpus and local_world % mp:
        # A pair is two consecutive ranks: with an odd count per node one pair would span two
        # nodes, its towers' activations crossing the network every layer instead of NVLink. (On
        # the CPU, gloo, where the tests run two one-process "nodes" on one machine, it is allowed.)
        raise UsageError(f"mp={mp} puts each pair of towers on one node's GPUs: --nproc_per_node must "
                         f"be a multiple of {mp}, got {local_world}")
    dev = resolve_device(device, index=local_rank)  # DeviceError (a ValueError) names the fix
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    mesh = Dist(rank, local_rank, world, rank // mp, world // mp, rank % mp, mp, dev)
    if world > 1:
        # device_id binds NCCL's communicators to this rank's GPU at once (no guessing later)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=10),
                                device_id=dev if dev.type == "cuda" else None)
        # Every rank must create every group, in the same order.
        for k in range(world // mp):
            ranks = list(range(k * mp, (k + 1) * mp))
            group = dist.new_group(ranks) if mp > 1 else None
            if rank in ranks:
                mesh.mp_group = group
        for m in range(mp):
            ranks = list(range(m, world, mp))
            group = dist.new_group(ranks) if world // mp > 1 else None
            if rank in ranks:
                mesh.dp_group = group
    return mesh


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def split_sizes(n: int, parts: int) -> list[int]:
    """How ``n`` rows (channels, classes) are cut over ``parts`` ranks: torch.tensor_split's rule,
    the first ``n % parts`` ranks one more (5 classes over 2 towers: 3 + 2; 1 class: 1 + 0)."""
    return [n // parts + (r < n % parts) for r in range(parts)]


def all_gather_uneven(x: torch.Tensor, group, sizes: list[int], dim: int) -> torch.Tensor:
    """Concatenate every rank's ``x`` along ``dim``, rank r contributing ``sizes[r]`` rows: gloo and
    NCCL gather equal shapes only, so each part is padded to the largest and cut after."""
    widest, fmt = max(sizes), memory_format(x)  # channels_last stays channels_last: a plain
    # .contiguous() would turn an NHWC activation into NCHW here, and the next conv back
    pad = list(x.shape)
    pad[dim] = widest - x.shape[dim]
    padded = torch.cat([x, x.new_zeros(pad)], dim=dim) if pad[dim] else x
    padded = padded.contiguous(memory_format=fmt)
    parts = [torch.empty_like(padded) for _ in sizes]  # the same memory format
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, sizes)], dim=dim)


class _Gather(torch.autograd.Function):
    """All-gather along dim 1 over ``group``, rank r giving ``sizes[r]`` channels. Backward: if the
    consumers on the ranks differ (each computes its own slice of the next layer), a rank's input
    influenced every rank's loss, so its gradient is the sum over ranks; if the consumers are
    replicated (the same loss on every rank), each rank already holds the whole gradient and keeps
    its own slice."""

    @staticmethod
    def forward(ctx, x, group, replicated, sizes):
        ctx.group, ctx.replicated = group, replicated
        ctx.rank = dist.get_rank(group)
        ctx.sizes = sizes or [x.shape[1]] * dist.get_world_size(group)
        return all_gather_uneven(x.detach(), group, ctx.sizes, 1)

    @staticmethod
    def backward(ctx, grad):
        fmt = memory_format(grad)
        grad = grad.contiguous(memory_format=fmt)
        if not ctx.replicated:
            dist.all_reduce(grad, group=ctx.group)
        start = sum(ctx.sizes[:ctx.rank])
        return grad.narrow(1, start, ctx.sizes[ctx.rank]).contiguous(memory_format=fmt), None, None, None


def memory_format(x: torch.Tensor):
    """channels_last when ``x`` (4-D) is laid out NHWC, also a channel slice of such a tensor;
    else contiguous_format. (With one channel both are the same memory.)"""
    nhwc = x.dim() == 4 and x.stride(1) == 1 and x.stride(3) != 1
    return torch.channels_last if nhwc else torch.contiguous_format


def gather(x: torch.Tensor, group, replicated: bool = False, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate the mp ranks' ``x`` along dim 1 (channels / features), rank r giving ``sizes[r]``
    (default: equal parts); identity without a group."""
    return x if group is None else _Gather.apply(x, group, replicated, sizes)


def broadcast_buffers(module: torch.nn.Module, mesh: Dist) -> None:
    """Every dp rank takes dp rank 0's buffers (BatchNorm running statistics), as DDP does before
    each training forward: after its last step each rank's statistics are its own, and evaluating
    the unwrapped module must see one set (the set the checkpoint saves)."""
    if mesh.dp_group is None:
        return
    for b in module.buffers():
        dist.broadcast(b, src=mesh.mp_rank, group=mesh.dp_group)  # global rank of dp rank 0 in this group


def all_reduce_sum(t: torch.Tensor, group) -> torch.Tensor:
    if group is not None:
        dist.all_reduce(t, group=group)
    return t
