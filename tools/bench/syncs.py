"""Host-device synchronisations in the trainer's step, by phase and precision (CUDA only).

    python tools/benchmark.py syncs --data=DATASET [--precision=fp32,bf16,fp16] [--steps=8]

Torch's sync debug mode sees only the syncs torch makes (``.item()``, GradScaler's inf check);
DALI's, inside the loader, are invisible to it. So each phase of a step is timed on the host
right after a long kernel (``torch.cuda._sleep``, ~20 ms) was queued: a phase that returns within
a few ms did not wait for the device; one that takes about the kernel's length waited for it,
i.e. synchronised. The phases are those of trainer/main.py's loop:

    next     next(loader): DALI's outputs bound to torch's stream, the copy / cast
    forward  the model under autocast and the loss
    step     trainer.step.optimize: backward, (GradScaler) optimizer step
    sums     the loss bookkeeping of the loop (device sums, no host read)

Both counts are reported per step: ``waited`` (the timing) and ``torch_seen`` (sync debug mode).
"""
from __future__ import annotations

import time
import warnings

from pipeline.errors import UsageError

PHASES = ("next", "forward", "step", "sums")
SLEEP_MS = 20.0


def _cycles_per_ms(torch) -> float:
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    torch.cuda._sleep(1 << 26)
    b.record()
    b.synchronize()
    return (1 << 26) / a.elapsed_time(b)


def count_syncs(data: str, precision: str, steps: int, batch_size: int, model_name: str) -> dict:
    import torch
    import torch.nn.functional as F

    import pipeline
    from trainer.config import Config
    from trainer.models import build_model
    from trainer.optim import build_optimizer
    from trainer.step import autocast, grad_scaler, input_dtype, optimize

    ds = pipeline.open_dataset(data)
    crop = 224 if ds.size >= 224 else ds.size - ds.size // 8
    loader = pipeline.build_loader(data, "train", batch_size=batch_size, crop=crop, device="cuda",
                                   dtype=input_dtype(precision), channels_last=True)
    net = build_model(model_name, len(ds.classes), crop).cuda().to(memory_format=torch.channels_last)
    optimizer, scaler = build_optimizer(net, Config()), grad_scaler(precision)
    sums = torch.zeros(2, dtype=torch.float64, device="cuda")
    cycles = int(_cycles_per_ms(torch) * SLEEP_MS)
    waited = {p: 0 for p in PHASES}
    seen = {p: 0 for p in PHASES}
    it = iter(_forever(loader))
    state = {}

    def phase(name, fn):
        torch.cuda._sleep(cycles)  # the device is now ~SLEEP_MS behind the host
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            t = time.perf_counter()
            try:
                fn()
            finally:
                dt = (time.perf_counter() - t) * 1000
                torch.cuda.set_sync_debug_mode(0)
        return dt > SLEEP_MS / 2, sum("synchroniz" in str(w.message) for w in caught)

    def next_batch():
        state["x"], state["y"] = next(it)

    def forward():
        with autocast("cuda", precision):
            state["loss"] = F.cross_entropy(net(state["x"]), state["y"])

    def step():
        optimize(state["loss"], optimizer, scaler)

    def bookkeeping():
        sums[0] += state["loss"].detach().double() * len(state["y"])
        sums[1] += len(state["y"])

    for k in range(steps + 2):  # two warm-up steps: cuDNN, the allocator, DALI's first batches
        for name, fn in zip(PHASES, (next_batch, forward, step, bookkeeping)):
            w, s = phase(name, fn)
            if k >= 2:
                waited[name] += w
                seen[name] += s
        torch.cuda.synchronize()
    loader.close()
    return {"bench": "syncs", "system": precision, "model": model_name, "batch_size": batch_size,
            "steps": steps, **{f"waited_{p}": waited[p] / steps for p in PHASES},
            **{f"torch_seen_{p}": seen[p] / steps for p in PHASES},
            "waited_per_step": sum(waited.values()) / steps, "torch_seen_per_step": sum(seen.values()) / steps}


def _forever(loader):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def syncs(data: str, precision: str = "fp32,bf16,fp16", steps: int = 8, batch_size: int = 64,
          model: str = "alexnet", json: str = "bench_out/syncs.json"):
    """Host-device syncs per training step, by phase, for each precision (needs CUDA).

    data: a dataset from tools/prepare_imagenet.py
    precision: fp32 | bf16 | fp16, comma-separated
    steps: timed steps per precision (after two warm-up steps)
    batch_size: images per step
    model: the network (alexnet: the paper's, mp=1)
    json: where to write the results
    """
    import json as jsonlib
    from pathlib import Path

    import torch

    from tools.bench import harness as bench

    if not torch.cuda.is_available():
        raise UsageError("syncs needs CUDA: on the CPU every op is synchronous, there is nothing to count")
    if not isinstance(steps, int) or steps < 1 or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError("--steps and --batch_size must be positive integers")
    rows = [count_syncs(data, p, steps, batch_size, model) for p in str(precision).split(",")]
    columns = [("precision", "system", "s"), ("waited / step", "waited_per_step", ".2f"),
               ("torch sees / step", "torch_seen_per_step", ".2f")] + \
              [(f"waited in {p}", f"waited_{p}", ".2f") for p in PHASES]
    Path(json).parent.mkdir(parents=True, exist_ok=True)
    Path(json).write_text(jsonlib.dumps({"rows": rows, "environment": bench.environment()}, indent=1))
    print(bench.markdown_table(rows, columns))
    return rows
