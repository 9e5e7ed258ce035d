"""Checkpoints in the layout-independent (mp=1) form, written atomically by global rank 0.

Every tower parameter of the split AlexNet is the mp_rank-th half along dim 0 of the one-module
parameter (trainer/models/alexnet.py), and SGD's momentum buffers have the parameters' shapes, so
a checkpoint gathers both along dim 0 over the mp group and a loader slices them again: a run can
resume on another dp x mp layout. The dict: model, optimizer (momentum per parameter name),
schedule, rng (every rank's), data (loader position), step, epoch, config.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from pipeline.fileio import atomic_write
from trainer.parallel import all_gather_uneven


def _gather_dim0(t: torch.Tensor, group, size: int) -> torch.Tensor:
    """The mp ranks' parts joined along dim 0; the parts may differ in length (fc8 with an odd
    class count), so the lengths are exchanged first."""
    if group is None:
        return t.detach().cpu().clone()
    rows = torch.tensor([t.shape[0]], device=t.device)
    lengths = [torch.empty_like(rows) for _ in range(size)]
    dist.all_gather(lengths, rows, group=group)
    return all_gather_uneven(t.detach(), group, [int(n) for n in lengths], 0).cpu()


def full_state(model, optimizer, d) -> tuple[dict, dict]:
    """(model state, momentum buffers by name), both in the mp=1 layout (collective over mp)."""
    model_state, momentum = {}, {}
    for name, p in model.named_parameters():
        model_state[name] = _gather_dim0(p, d.mp_group, d.mp_size)
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            momentum[name] = _gather_dim0(buf, d.mp_group, d.mp_size)
    for name, b in model.named_buffers():  # e.g. BatchNorm statistics (mp=1 models only)
        model_state[name] = b.detach().cpu().clone()
    return model_state, momentum


def load_full_state(model, optimizer, model_state: dict, momentum: dict, d) -> None:
    def own_half(t: torch.Tensor) -> torch.Tensor:
        return t.tensor_split(d.mp_size, dim=0)[d.mp_rank]  # the models' split rule

    params = dict(model.named_parameters())
    model.load_state_dict({name: own_half(t) if name in params else t for name, t in model_state.items()})
    for name, p in params.items():
        if name in momentum:
            optimizer.state[p]["momentum_buffer"] = own_half(momentum[name]).to(p.device).clone()


def gather_rng(d) -> list:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and d.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(d.device)
    if d.world == 1:
        return [state]
    states = [None] * d.world
    dist.all_gather_object(states, state)
    return states


def restore_rng(states: list, d) -> bool:
    """Restore this rank's RNG when the world size matches (else dropout masks differ: logged)."""
    if len(states) != d.world:
        return False
    torch.set_rng_state(states[d.rank]["torch"])
    if "cuda" in states[d.rank] and d.device.type == "cuda":
        torch.cuda.set_rng_state(states[d.rank]["cuda"], d.device)
    return True


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save through pipeline.fileio.atomic_write: a kill mid-write never leaves a half file
    (only global rank 0 writes, so the fixed temporary name is safe)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def latest(ckpt_dir: Path) -> Path | None:
    path = ckpt_dir / "latest.pt"
    return path if path.exists() else None
