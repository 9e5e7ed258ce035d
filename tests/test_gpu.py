"""The GPU graph against the CPU graph: same decisions, same numbers (nvJPEG for JPEG payloads).
Marked gpu and skipped without CUDA; run them on a machine with one: pytest -m gpu tests/test_gpu.py"""
import pytest
import torch

import pipeline
from pipeline.prepare.convert import convert

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def batches(dataset, device, **kw):
    loader = pipeline.build_loader(dataset, "train", batch_size=4, crop=24, device=device, seed=3, **kw)
    return [(x.cpu(), y.cpu()) for x, y in loader]


@pytest.mark.parametrize("kw", [{}, {"mean": "channel"}, {"dtype": torch.float16},
                                {"channels_last": True}, {"lighting": 0.5}])
def test_gpu_equals_cpu_raw(dataset, kw):
    cpu, gpu = batches(dataset, "cpu", **kw), batches(dataset, "cuda", **kw)
    assert len(cpu) == len(gpu)
    for (a, la), (b, lb) in zip(cpu, gpu):
        assert torch.equal(la, lb)
        torch.testing.assert_close(b.float(), a.float(), atol=1e-2 if kw.get("dtype") else 1e-4, rtol=1e-3)


def test_gpu_jpeg_decoding_close_to_cpu(tree, tmp_path):
    out = tmp_path / "jpeg"
    convert(tree, out, size=32, encoding="jpeg", shard_size=6, workers=1, progress=False)
    cpu, gpu = batches(out, "cpu"), batches(out, "cuda")
    for (a, _), (b, _) in zip(cpu, gpu):
        # nvJPEG and libjpeg-turbo may differ by a few levels in chroma upsampling and IDCT
        assert (a - b).abs().mean() < 2.0


def test_loader_and_training_steps_never_sync_the_host(dataset):
    """The loader's batches go straight into training steps (autocast bf16, channels_last, the
    trainer's optimize) without one host-device synchronisation that torch makes: torch's sync
    debug mode raises on any. It cannot see DALI's own (inside its C++ executor): those are
    counted by timing, in tools/benchmark.py syncs (make gpu-check)."""
    import torch.nn.functional as F
    from trainer.step import autocast, optimize

    loader = pipeline.build_loader(dataset, "train", batch_size=4, crop=24, device="cuda", seed=3,
                                   dtype=torch.bfloat16, channels_last=True)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 4)).cuda()
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sums = torch.zeros(2, dtype=torch.float64, device="cuda")  # loss sum, sample count
    batches = iter(loader)
    x, y = next(batches)  # first step outside: allocator and cuDNN warm-up
    optimize(F.cross_entropy(model(x.float()), y), opt)
    torch.cuda.synchronize()
    steps = 0
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x, y in batches:
            assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
            with autocast("cuda", "bf16"):
                loss = F.cross_entropy(model(x), y)
            optimize(loss, opt)
            sums[0] += loss.detach().double() * y.numel()
            sums[1] += y.numel()  # a host int: no device read
            steps += 1
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert steps == len(loader) - 1 and sums[1].item() == 4 * steps


# -- the whole matrix: split x payload x dtype x layout, two epochs and a mid-epoch resume ------

# one ulp at the largest magnitudes a batch holds (|x| < 256): rounding fp32 results that differ
# in their last bits may land one ulp apart; nvJPEG and libjpeg-turbo differ by a few levels
ULP = {torch.float32: 1e-3, torch.float16: 0.25, torch.bfloat16: 2.0}
MATRIX = [(split, enc, dtype, cl) for split in ("train", "val", "ten")
          for enc in ("raw", "jpeg")
          for dtype, cl in ((torch.float32, False), (torch.float16, True), (torch.bfloat16, True),
                            (torch.bfloat16, False))]


@pytest.fixture(scope="module")
def jpeg_dataset(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "jpeg"
    convert(tree, out, size=32, encoding="jpeg", shard_size=6, workers=1, progress=False)
    return out


def _two_epochs_with_a_resume(path, split, device, **kw):
    """Epoch 0 whole; epoch 1: two batches, a new loader resumed from the state, the rest."""
    kw = dict(batch_size=3, crop=24, device=device, seed=5, **kw)
    split_name = "val" if split == "ten" else split
    kw["ten_crop"] = split == "ten"
    loader = pipeline.build_loader(path, split_name, **kw)
    out = [(x.cpu(), y.cpu()) for x, y in loader]
    loader.set_epoch(1)
    it = iter(loader)
    out += [tuple(t.cpu() for t in next(it)) for _ in range(2)]
    state = loader.state_dict()
    del it
    loader.close()
    again = pipeline.build_loader(path, split_name, **kw)
    again.load_state_dict(state)
    out += [(x.cpu(), y.cpu()) for x, y in again]
    return out


@pytest.mark.parametrize("split,enc,dtype,cl", MATRIX,
                         ids=[f"{s}-{e}-{str(d)[6:]}-{'nhwc' if c else 'nchw'}" for s, e, d, c in MATRIX])
def test_gpu_graph_equals_cpu_graph(dataset, jpeg_dataset, split, enc, dtype, cl):
    path = dataset if enc == "raw" else jpeg_dataset
    kw = dict(dtype=dtype, channels_last=cl)
    cpu = _two_epochs_with_a_resume(path, split, "cpu", **kw)
    gpu = _two_epochs_with_a_resume(path, split, "cuda", **kw)
    assert len(cpu) == len(gpu) > 2
    for (a, la), (b, lb) in zip(cpu, gpu):
        assert torch.equal(la, lb) and a.shape == b.shape and a.dtype == b.dtype == dtype
        if cl:
            flat = b.flatten(0, 1) if split == "ten" else b
            assert flat.is_contiguous(memory_format=torch.channels_last)
        diff = (a.float() - b.float()).abs()
        if enc == "raw":
            assert diff.max() <= ULP[dtype], (split, dtype, cl, diff.max())
        else:
            assert diff.mean() < 2.0, (split, dtype, cl, diff.mean())


# -- the ring, the DLPack hand-off and the streams (issue 22) -------------------------------------

def _held(dataset, device, prefetch, **kw):
    """Every batch of two epochs, kept on its device while later ones reuse the ring."""
    loader = pipeline.build_loader(dataset, "train", batch_size=3, crop=24, device=device, seed=4,
                                   prefetch=prefetch, num_threads=2, **kw)
    held = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        held += list(loader)
    return loader, held


@pytest.mark.parametrize("prefetch", [1, 3])
def test_held_cuda_batches_keep_their_pixels_while_the_ring_is_reused(dataset, prefetch):
    """The CPU ring test (tests/test_loader.py) on CUDA: a slot comes back only after torch's
    stream has copied its batch, so no held batch changes; each equals the CPU graph's."""
    loader, gpu = _held(dataset, "cuda", prefetch)
    _, cpu = _held(dataset, "cpu", prefetch)
    assert len(loader._feed.gatherer.buffers) == prefetch + 2 and len(gpu) == len(cpu) > prefetch + 2
    torch.cuda.synchronize()
    for (a, la), (b, lb) in zip(cpu, gpu):
        assert torch.equal(la, lb.cpu())
        torch.testing.assert_close(b.cpu(), a, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_no_use_after_free_when_the_device_is_behind(dataset, dtype):
    """The device is held back (a 1 s kernel) while a batch's reduction and label copy are queued,
    the batch is dropped and four more are pulled: if DALI could reuse the memory of the dropped
    batch (or its ring slot) before torch's queued kernels read it, the sums would differ from
    the CPU graph's."""
    kw = dict(batch_size=4, crop=24, seed=3, dtype=dtype)
    cpu = [(x.float().sum(dim=(1, 2, 3)), y) for x, y in
           pipeline.build_loader(dataset, "train", device="cpu", **kw)]
    it = iter(pipeline.build_loader(dataset, "train", device="cuda", **kw))
    x, y = next(it)
    torch.cuda._sleep(1 << 30)  # ~0.5-1 s of device time queued before the reads
    sums, labels = [x.float().sum(dim=(1, 2, 3))], [y.clone()]
    del x, y  # torch's last reference to the first batch: its reads are still queued
    for x, y in it:  # the rest of the epoch (5 batches) pulled while the device is behind
        sums.append(x.float().sum(dim=(1, 2, 3)))
        labels.append(y.clone())
    torch.cuda.synchronize()
    assert len(sums) == len(cpu)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for (ref, ly), got, gy in zip(cpu, sums, labels):
        assert torch.equal(gy.cpu(), ly)
        torch.testing.assert_close(got.cpu(), ref, rtol=tol, atol=tol * 24 * 24 * 3)


def test_data_wait_is_device_idle_time_not_a_host_blocked_behind_queued_work():
    """A compute-bound loop whose loader blocks the host (as DALI's host stage may) while the
    device still runs the queued step: no data wait. A loader that leaves the device idle: wait."""
    import time
    from trainer.timing import DataWait

    def loader(n, host_block):
        for _ in range(n):
            time.sleep(host_block)
            yield torch.ones(8, device="cuda")

    def run(step_sleep_cycles, host_block):
        wait = DataWait(torch.device("cuda"))
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for x in wait.timed(loader(6, host_block)):
            torch.cuda._sleep(step_sleep_cycles)
            x.sum()
        torch.cuda.synchronize()
        return wait.seconds() / (time.perf_counter() - t0)

    assert run(1 << 28, 0.02) < 0.1   # the device is busy while the host waits in the loader
    assert run(1 << 10, 0.05) > 0.7   # the device has nothing to do: waiting for data


# -- the trainer on CUDA ------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [{"precision": "fp32"}, {"precision": "bf16", "channels_last": True},
                                   {"precision": "fp16"}, {"precision": "bf16", "compile": True}],
                         ids=["fp32", "bf16-cl", "fp16", "bf16-compile"])
def test_trainer_on_cuda_stops_and_resumes_exactly(dataset, tmp_path, extra):
    from helpers import base_args, losses, torchrun
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    common = dict(mp=1, device="cuda", max_steps=8, ckpt_every_steps=2, **extra)
    torchrun(1, *base_args(dataset, whole, **common), timeout=600)
    torchrun(1, *base_args(dataset, parts, **dict(common, max_steps=5)), timeout=600)
    torchrun(1, *base_args(dataset, parts, **common), timeout=600)
    a, b = losses(whole), losses(parts)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    rtol = 1e-5 if extra["precision"] == "fp32" and not extra.get("compile") else 1e-3
    import numpy as np
    np.testing.assert_allclose([b[s] for s in a], list(a.values()), rtol=rtol)


def test_evaluate_on_cuda_agrees_with_the_trainers_evaluation(dataset, tmp_path):
    import json
    import subprocess
    import sys
    from helpers import ROOT, base_args, torchrun
    out = tmp_path / "run"
    torchrun(1, *base_args(dataset, out, mp=1, device="cuda", max_steps=0, epochs=1, eval_every=1,
                           ten_crop_eval=True), timeout=600)
    res = subprocess.run([sys.executable, "tools/evaluate.py", str(out / "checkpoints" / "epoch000.pt"),
                          "--device=cuda", "--batch_size=4", f"--json={tmp_path / 'e.json'}"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads((tmp_path / "e.json").read_text())
    [row] = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]
    assert got["one_crop"]["top1"] == row["val_top1"] and got["ten_crop"]["top1"] == row["val_top1_10crop"]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL with mp=2 needs two GPUs")
def test_nccl_1x2_equals_one_process(dataset, tmp_path):
    """The two towers on two GPUs over NCCL (the mp all-gathers and the backward all-reduce)
    give the single-process losses; gloo's version of this is tests/test_trainer.py."""
    import numpy as np
    from helpers import base_args, losses, torchrun
    runs = {}
    for mp in (1, 2):
        out = tmp_path / f"mp{mp}"
        torchrun(mp, *base_args(dataset, out, mp=mp, device="cuda", max_steps=10), timeout=600)
        runs[mp] = losses(out)
    np.testing.assert_allclose([runs[2][s] for s in runs[1]], list(runs[1].values()), rtol=1e-3)
