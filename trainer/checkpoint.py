"""Checkpoints in the layout-independent (mp=1) form: written atomically, resumed collectively,
pruned to a bounded number.

Every tower parameter of the split AlexNet is the mp_rank-th part along dim 0 of the one-module
parameter (trainer/models/alexnet.py, tensor_split), and SGD's momentum buffers have the
parameters' shapes, so a checkpoint gathers both along dim 0 over the mp group and a loader slices
them again: a run can resume on another dp x mp layout.

The dict (``latest.pt``, ``epochNNN.pt``):
    model      parameters and buffers by name, mp=1 layout (CPU tensors)
    momentum   SGD momentum buffer by parameter name, mp=1 layout
    schedule   the learning-rate schedule's state (plateau cuts, best, bad epochs)
    scaler     the fp16 GradScaler's state_dict (None without one)
    rng        every rank's torch (and CUDA) RNG state, by global rank
    data       the train loader's position (epoch, step, seed, global batch)
    sums       the epoch's running sums reduced over dp: {"epoch": [loss x n, n], "log": [..]},
               so a mid-epoch resume logs the same train_loss as an uninterrupted run
    best       {"epoch", "top1"}: the best val top-1 so far (kept by retention)
    step, config, run_id (one per run, kept across resumes), dataset (config.dataset_identity)

Writers: global rank 0, and the first rank of every node that cannot see rank 0's run directory
(``is_writer``): each writes into its own ``out``, so a node-local run directory holds the
checkpoints too. Resume is one collective decision (``resume_state``): every rank reports what its ``out``
holds, the rank with the newest checkpoint of the run loads it and broadcasts it to all.
"""
from __future__ import annotations

import re
import socket
import uuid
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


def full_state(model, optimizer, mesh) -> tuple[dict, dict]:
    """(model state, momentum buffers by name), both in the mp=1 layout (collective over mp)."""
    model_state, momentum = {}, {}
    for name, p in model.named_parameters():
        model_state[name] = _gather_dim0(p, mesh.mp_group, mesh.mp_size)
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            momentum[name] = _gather_dim0(buf, mesh.mp_group, mesh.mp_size)
    for name, b in model.named_buffers():  # e.g. BatchNorm statistics (mp=1 models only)
        model_state[name] = b.detach().cpu().clone()
    return model_state, momentum


def load_full_state(model, optimizer, model_state: dict, momentum: dict, mesh) -> None:
    def own_half(t: torch.Tensor) -> torch.Tensor:
        return t.tensor_split(mesh.mp_size, dim=0)[mesh.mp_rank]  # the models' split rule

    params = dict(model.named_parameters())
    model.load_state_dict({name: own_half(t) if name in params else t for name, t in model_state.items()})
    for name, p in params.items():
        if name in momentum:
            optimizer.state[p]["momentum_buffer"] = own_half(momentum[name]).to(p.device).clone()


def gather_rng(mesh) -> list:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and mesh.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(mesh.device)
    if mesh.world == 1:
        return [state]
    states = [None] * mesh.world
    dist.all_gather_object(states, state)
    return states


def restore_rng(states: list, mesh) -> bool:
    """Restore this rank's RNG when the world size matches (else dropout masks differ: logged)."""
    if len(states) != mesh.world:
        return False
    torch.set_rng_state(states[mesh.rank]["torch"])
    if "cuda" in states[mesh.rank] and mesh.device.type == "cuda":
        torch.cuda.set_rng_state(states[mesh.rank]["cuda"], mesh.device)
    return True


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save through pipeline.fileio.atomic_write: a kill mid-write never leaves a half file
    (one writer per run directory, so the fixed temporary name is safe)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def latest(ckpt_dir: Path) -> Path | None:
    path = ckpt_dir / "latest.pt"
    return path if path.exists() else None


class ResumeError(ValueError):
    """The ranks see checkpoints of different runs: no step is taken (a ValueError, so the CLI
    prints it as one line)."""


def broadcast_object(obj, src: int, mesh):
    """``obj`` from global rank ``src`` on every rank (pickled; tensors come back on the CPU)."""
    if mesh.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=mesh.device if mesh.device.type == "cuda" else None)
    return box[0]


def is_writer(ckpt_dir: Path, mesh) -> bool:
    """Collective: whether this rank writes checkpoints. Rank 0 leaves a probe file in its
    checkpoint directory; the first rank of each node (LOCAL_RANK 0) that does not see it has a
    run directory of its own (node-local storage) and writes there too."""
    if mesh.rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    if mesh.world == 1:
        return True
    token = broadcast_object(uuid.uuid4().hex if mesh.rank == 0 else None, 0, mesh)
    probe = ckpt_dir / f".probe-{token}"
    if mesh.rank == 0:
        probe.write_bytes(b"")
    dist.barrier()
    mine = mesh.rank == 0 or (mesh.local_rank == 0 and not probe.exists())
    dist.barrier()
    if mesh.rank == 0:
        probe.unlink()
    if mine and mesh.rank:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    return mine


def resume_state(ckpt_dir: Path, mesh) -> dict | None:
    """Collective: the state every rank resumes from, or None for a fresh start.

    Each rank reports the run id and step of the latest.pt it sees (read memory-mapped: only the
    small fields are touched); the rank with the newest of the run loads it whole and broadcasts
    it. Checkpoints of two different runs visible at once stop every rank before any step."""
    path = latest(ckpt_dir)
    seen = None
    if path is not None:
        head = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        seen = {"run_id": head.get("run_id"), "step": head["step"],
                "where": f"{socket.gethostname()}:{path.resolve()}"}
        del head
    views = [seen]
    if mesh.world > 1:
        views = [None] * mesh.world
        dist.all_gather_object(views, seen)
    holders = [(r, v) for r, v in enumerate(views) if v is not None]
    if not holders:
        return None
    runs = {v["run_id"] for _, v in holders}
    if len(runs) > 1:
        listing = "; ".join(f"rank {r}: {v['where']} (run {v['run_id']}, step {v['step']})"
                            for r, v in holders)
        raise ResumeError(f"the ranks see checkpoints of different runs, refusing to guess which to "
                          f"resume: {listing}. Remove the one that does not belong to this job.")
    src, newest = max(holders, key=lambda h: (h[1]["step"], -h[0]))
    state = torch.load(path, map_location="cpu", weights_only=False) if mesh.rank == src else None
    state = broadcast_object(state, src, mesh)
    state["resumed_from"] = newest["where"]
    return state


def new_run_id(mesh) -> str:
    """One id per run, the same on every rank; kept in every checkpoint of the run."""
    return broadcast_object(uuid.uuid4().hex if mesh.rank == 0 else None, 0, mesh)


EPOCH_FILE = re.compile(r"epoch(\d+)\.pt$")


def prune(ckpt_dir: Path, keep_last: int, keep_epochs: list[int], best_epoch: int | None) -> list[Path]:
    """Delete epoch checkpoints except the last ``keep_last``, the best by val top-1 and those in
    ``keep_epochs``; latest.pt is never touched. Returns what was deleted."""
    epochs = sorted((int(m.group(1)), p) for p in ckpt_dir.glob("epoch*.pt")
                    if (m := EPOCH_FILE.search(p.name)))
    last = {e for e, _ in epochs[-keep_last:]} if keep_last else set()
    keep = last | set(keep_epochs) | ({best_epoch} if best_epoch is not None else set())
    gone = [p for e, p in epochs if e not in keep]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def capture(model, optimizer, scaler, mesh, **fields) -> dict:
    """Collective (mp gathers, RNG over the world): the checkpoint dict, on every rank; ``fields``
    are the rest (schedule, data, sums, best, step, config, run_id, dataset)."""
    model_state, momentum = full_state(model, optimizer, mesh)
    return dict(model=model_state, momentum=momentum, rng=gather_rng(mesh),
                scaler=scaler.state_dict() if scaler is not None else None, **fields)


def restore(state: dict, model, optimizer, scaler, mesh) -> bool:
    """Model, momentum, GradScaler and RNG from ``state`` (as broadcast by resume_state). Returns
    False when the world size changed and this rank's RNG could not be restored."""
    load_full_state(model, optimizer, state["model"], state["momentum"], mesh)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return restore_rng(state["rng"], mesh)
