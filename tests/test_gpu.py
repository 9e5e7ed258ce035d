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
