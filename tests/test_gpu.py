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
    trainer's optimize) without one host-device synchronisation: torch raises on any."""
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
