"""The one training step, shared by the trainer and the model benchmark (so the benchmark times
exactly what trains): autocast per precision, backward (scaled for fp16), optimizer step."""
from __future__ import annotations

from contextlib import nullcontext

import torch

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_error(precision: str, device_type: str) -> str | None:
    """Why ``precision`` cannot run on this device type, or None: the trainer and the model
    benchmark raise it as their own usage error."""
    if precision not in AMP_DTYPES:
        return f"precision must be one of {tuple(AMP_DTYPES)}, got {precision!r}"
    if precision == "fp16" and device_type != "cuda":
        return "precision fp16 needs CUDA; use bf16 on the CPU"
    return None


def input_dtype(precision: str) -> torch.dtype:
    """The dtype batches should arrive in: the autocast dtype (the first conv reads it directly,
    so the batch never exists in fp32 on the device), float32 without autocast."""
    return AMP_DTYPES[precision] or torch.float32


def autocast(device_type: str, precision: str):
    dtype = AMP_DTYPES[precision]
    return torch.autocast(device_type, dtype=dtype) if dtype else nullcontext()


def grad_scaler(precision: str):
    return torch.amp.GradScaler("cuda") if precision == "fp16" else None


def optimize(loss: torch.Tensor, optimizer, scaler=None) -> None:
    optimizer.zero_grad(set_to_none=True)
    if scaler:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
