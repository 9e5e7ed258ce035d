"""Which torch device a run uses: one rule for the loader, the trainer and the benchmarks.

    resolve_device("auto")            -> cuda:<current> when CUDA is available, else cpu
    resolve_device("cuda", index=3)   -> cuda:3 (the trainer passes its LOCAL_RANK)
    resolve_device("cpu")             -> cpu
"""
from __future__ import annotations

import importlib.metadata
import re

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


def dali_cuda() -> tuple[int, int] | None:
    """The CUDA version the installed DALI wheel is built for (nvidia-dali-cuda130: (13, 0)),
    None when it cannot be told."""
    for dist in importlib.metadata.distributions():
        m = re.fullmatch(r"nvidia[-_]dali[-_]cuda(\d+)(\d)", (dist.metadata["Name"] or "").lower())
        if m:
            return int(m.group(1)), int(m.group(2))
    return None


def driver_cuda() -> tuple[int, int] | None:
    """The newest CUDA version the NVIDIA driver supports ((13, 0) for R580), None if unknown:
    the driver's own ``cuDriverGetVersion`` (libcuda, no CUDA context made). torch has no public
    call for it, and the private one read nothing on the lent H200 (torch 2.11)."""
    import ctypes
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        version = ctypes.c_int(0)
        ok = lib.cuDriverGetVersion(ctypes.byref(version)) == 0  # CUDA_SUCCESS
    except (OSError, AttributeError):  # no NVIDIA driver here
        return None
    v = version.value if ok else 0
    return (v // 1000, v % 1000 // 10) if v > 0 else None


def check_driver(needed=None, have=None) -> None:
    """Raise DeviceError, in one line, when the driver is too old for the DALI wheel: DALI would
    otherwise fail inside its first GPU operator with a CUDA error. ``needed``/``have`` default to
    dali_cuda() and driver_cuda(); an unknown one passes."""
    needed = dali_cuda() if needed is None else needed
    have = driver_cuda() if have is None else have
    if needed and have and have < needed:
        raise DeviceError(
            f"the installed DALI (nvidia-dali-cuda{needed[0]}{needed[1]}) needs an NVIDIA driver for "
            f"CUDA {needed[0]}.{needed[1]} or newer (R580+ for CUDA 13.0); this driver supports CUDA "
            f"{have[0]}.{have[1]}: update the driver or install the DALI wheel built for CUDA "
            f"{have[0]} (e.g. nvidia-dali-cuda{have[0]}0)")
