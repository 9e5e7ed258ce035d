"""Which torch device a run uses: one rule for the loader, the trainer and the benchmarks.

    resolve_device("auto")            -> cuda:<current> when CUDA is available, else cpu
    resolve_device("cuda", index=3)   -> cuda:3 (the trainer passes its LOCAL_RANK)
    resolve_device("cpu")             -> cpu
"""
from __future__ import annotations

import torch

from .errors import UsageError


class DeviceError(UsageError):
    """A device that cannot be used here, named with what to pass instead (a user error; also a
    ValueError, through UsageError)."""


def resolve_device(device="auto", index: int | None = None) -> torch.device:
    """``device``: "auto", "cpu", "cuda", "cuda:N" or a torch.device. A CUDA device without an
    index gets ``index``, else the current CUDA device."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"device must be 'auto', 'cuda' or 'cpu', got {device!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("device='cuda' but CUDA is not available (use device='cpu' or 'auto')")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device() if index is None else index)
        return device
    if device.type != "cpu":
        raise DeviceError(f"device must be 'auto', 'cuda' or 'cpu', got {device!r}")
    return device
