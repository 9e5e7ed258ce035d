"""The trainer's data-wait measure (trainer/timing.py): a slow loader is data wait, a slow step is
not. The CPU path here; the CUDA path (device idle time, a host blocked in the loader behind
queued work is not waiting) is in tests/test_gpu.py."""
import time

import torch

from trainer.timing import DataWait


class Slow:
    """``n`` items, each ``next`` taking ``delay`` seconds."""

    def __init__(self, n, delay):
        self.n, self.delay = n, delay

    def __iter__(self):
        for i in range(self.n):
            time.sleep(self.delay)
            yield i


def run(loader_delay, step_delay, n=8):
    wait = DataWait(torch.device("cpu"))
    t0 = time.perf_counter()
    seen = []
    for item in wait.timed(Slow(n, loader_delay)):
        time.sleep(step_delay)
        seen.append(item)
    return seen, wait.seconds(), time.perf_counter() - t0


def test_a_slow_loader_is_data_wait():
    seen, waited, elapsed = run(0.05, 0.0)
    assert seen == list(range(8))
    assert waited >= 8 * 0.05 and waited / elapsed > 0.9


def test_a_slow_step_is_not_data_wait():
    seen, waited, elapsed = run(0.0, 0.05)
    assert seen == list(range(8))
    assert waited / elapsed < 0.05 and elapsed >= 8 * 0.05


def test_the_loop_breaking_early_stops_the_clock_and_closes_the_loader():
    closed = []

    def loader():
        try:
            yield from range(10)
        finally:
            closed.append(True)

    wait = DataWait(torch.device("cpu"))
    for i in wait.timed(loader()):
        if i == 2:
            break
    time.sleep(0.05)
    assert wait.seconds() < 0.04  # the time after the break is nobody's wait
    import gc
    gc.collect()
    assert closed == [True]


# -- through the trainer: data_wait_frac and the data-bound note --------------------------------

class SlowLoader:
    """A real loader whose every batch takes ``delay`` seconds more to arrive."""

    def __init__(self, loader, delay):
        self._loader, self._delay = loader, delay

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def __len__(self):
        return len(self._loader)

    def __iter__(self):
        for batch in self._loader:
            time.sleep(self._delay)
            yield batch


def _train(dataset, out, monkeypatch, capsys, loader_delay=0.0, step_delay=0.0):
    import json

    import pipeline
    import trainer.main as main_mod
    from helpers import ROOT

    build = pipeline.build_loader

    def slow_build(path, split, **kw):
        loader = build(path, split, **kw)
        return SlowLoader(loader, loader_delay) if split == "train" and loader_delay else loader

    monkeypatch.setattr(pipeline, "build_loader", slow_build)
    if step_delay:
        model_from_config = main_mod.model_from_config

        def slow_model(*a, **kw):
            model = model_from_config(*a, **kw)
            model.register_forward_hook(lambda *_: time.sleep(step_delay))
            return model
        monkeypatch.setattr(main_mod, "model_from_config", slow_model)
    main_mod.main(config=str(ROOT / "configs" / "tiny_cpu.yaml"), data=str(dataset), out=str(out),
                  batch_size=8, epochs=2, eval_every=0, log_every=3, dropout=0.0)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["data_wait_frac"] for r in rows if r["kind"] == "epoch"], capsys.readouterr().out


def test_a_slow_loader_makes_the_trainer_say_data_bound(dataset, tmp_path, monkeypatch, capsys):
    fracs, log = _train(dataset, tmp_path / "slow_loader", monkeypatch, capsys, loader_delay=0.6)
    assert len(fracs) == 2 and min(fracs) > 0.4, fracs  # 0.6 s a batch against ~0.1-0.3 s a step
    assert "data-bound: training waited for the loader" in log


def test_a_slow_model_is_not_data_bound(dataset, tmp_path, monkeypatch, capsys):
    fracs, log = _train(dataset, tmp_path / "slow_model", monkeypatch, capsys, step_delay=0.3)
    assert len(fracs) == 2 and max(fracs) < 0.1, fracs
    assert "data-bound" not in log
