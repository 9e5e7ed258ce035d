"""The DALI loader against a NumPy reference fed the same random decisions; sharding, order,
resumption and bad arguments. Runs the CPU graph here; the GPU graph is the same code (test_gpu)."""
import numpy as np
import pytest
import torch

import pipeline
from pipeline.prepare.convert import convert
from pipeline.load.loader import LoaderError


def reference(ds, split, i, x, y, flip, alpha, crop, mean, form="code"):
    """What the paper's augmentation makes of sample i, in float64, CHW."""
    img = ds[split][int(i)][0].astype(np.float64)
    s = ds.stats
    scale = np.sqrt(s["eigval"]) if form == "code" else s["eigval"] / 255  # paper: lambda for [0, 1] pixels
    offset = s["eigvec"] @ (alpha * scale)  # one RGB shift for every pixel of the image
    out = img[y:y + crop, x:x + crop] + offset
    if mean == "pixel":
        out = out - s["mean_image"].astype(np.float64)[y:y + crop, x:x + crop]
    elif mean == "channel":
        out = (out - s["channel_mean"]) / s["channel_std"]
    if flip:
        out = out[:, ::-1]
    return out.transpose(2, 0, 1)


def run_epoch(loader, epoch=0):
    loader.set_epoch(epoch)
    batches = [(x.clone(), y.clone()) for x, y in loader]
    return batches


@pytest.mark.parametrize("mean", ["pixel", "channel", "none"])
@pytest.mark.parametrize("form", ["code", "paper"])
def test_train_matches_numpy_reference(dataset, mean, form):
    ds = pipeline.open_dataset(dataset)
    loader = pipeline.build_loader(dataset, "train", batch_size=5, crop=24, device="cpu", seed=3,
                                   lighting=0.1, lighting_form=form, mean=mean, drop_last=False)
    order, d = loader.plan(1)
    assert d.flip.any() and (~d.flip).any() and len(set(d.crop_x)) > 3
    for step, (x, y) in enumerate(run_epoch(loader, epoch=1)):
        idx = loader.indices(1, step)
        assert x.shape == (len(idx), 3, 24, 24) and x.dtype == torch.float32
        for k, i in enumerate(idx):
            ref = reference(ds, "train", i, d.crop_x[i], d.crop_y[i], d.flip[i], d.alpha[i], 24, mean, form)
            np.testing.assert_allclose(x[k].numpy(), ref, rtol=0, atol=2e-4)
            assert y[k] == ds["train"][int(i)][1]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("mean", ["channel", "none"])
def test_train_without_lighting_matches_numpy_reference(dataset, mean, channels_last):
    """No lighting: the graph's mean is a constant. Where the gatherer cuts the windows (no mean
    image), the crop positions and flips reach the pixels through it, not through DALI."""
    ds = pipeline.open_dataset(dataset)
    loader = pipeline.build_loader(dataset, "train", batch_size=4, crop=21, device="cpu", seed=5,
                                   lighting=0.0, mean=mean, drop_last=False, channels_last=channels_last)
    assert loader.precrop
    _, d = loader.plan(0)
    assert d.flip.any() and (~d.flip).any() and len(set(d.crop_x)) > 3 and len(set(d.crop_y)) > 3
    for step, (x, y) in enumerate(run_epoch(loader)):
        idx = loader.indices(0, step)
        assert x.shape == (len(idx), 3, 21, 21)
        for k, i in enumerate(idx):
            ref = reference(ds, "train", i, d.crop_x[i], d.crop_y[i], d.flip[i], np.zeros(3), 21, mean)
            np.testing.assert_allclose(x[k].numpy(), ref, rtol=0, atol=2e-4)
            assert y[k] == ds["train"][int(i)][1]


@pytest.mark.parametrize("mean,batch_size,threads", [("channel", 4, 2), ("none", 6, 4), ("channel", 8, 3)])
def test_val_centre_crop_matches_numpy_reference_without_a_mean_image(dataset, mean, batch_size, threads):
    """The gatherer cuts the windows; each batch is fed as a few equal sequences (8 val samples:
    batches of 4 as 2 x 2; of 6 then 2 as 3 x 2 then 2 x 1; of 8 with 3 threads as 2 x 4)."""
    from pipeline.load.feed import _parts
    assert (_parts(4, 2), _parts(6, 4), _parts(2, 4), _parts(8, 3), _parts(7, 4)) == (2, 3, 2, 2, 1)
    ds = pipeline.open_dataset(dataset)
    loader = pipeline.build_loader(dataset, "val", batch_size=batch_size, crop=25, device="cpu",
                                   mean=mean, num_threads=threads)
    assert loader.precrop
    seen = []
    for step, (x, y) in enumerate(run_epoch(loader)):
        for k, i in enumerate(loader.indices(0, step)):
            ref = reference(ds, "val", i, 3, 3, False, np.zeros(3), 25, mean)  # (32 - 25) // 2 = 3
            np.testing.assert_allclose(x[k].numpy(), ref, atol=2e-4)
            seen.append(int(i))
    assert seen == list(range(len(ds["val"])))


@pytest.mark.parametrize("size,crop", [(32, 28), (9, 9), (7, 1), (40, 3)])
def test_the_gather_cuts_and_mirrors_windows_like_numpy(size, crop, rng):
    """The compiled window copy against numpy slicing: random shards, rows, windows and flips."""
    from numba import typed
    from pipeline.load.gather import _copy_windows

    shards = [rng.integers(0, 256, (n, size * size * 3), dtype=np.uint8) for n in (3, 5, 1)]
    n = 40
    shard = rng.integers(0, 3, n)
    row = np.array([rng.integers(0, len(shards[k])) for k in shard])
    x, y = rng.integers(0, size - crop + 1, n), rng.integers(0, size - crop + 1, n)
    flip = rng.random(n) < 0.5
    out = np.zeros((n, crop, crop * 3), np.uint8)
    _copy_windows(typed.List(shards), shard, row, x, y, flip, size, out, 0, n)
    for i in range(n):
        img = shards[shard[i]][row[i]].reshape(size, size, 3)[y[i]:y[i] + crop, x[i]:x[i] + crop]
        np.testing.assert_array_equal(out[i].reshape(crop, crop, 3), img[:, ::-1] if flip[i] else img)


def test_lighting_is_one_rgb_shift_per_image_and_varies(dataset):
    plain = pipeline.build_loader(dataset, "train", batch_size=4, crop=32, device="cpu", lighting=0.0,
                                  flip=False, mean="none")
    lit = pipeline.build_loader(dataset, "train", batch_size=4, crop=32, device="cpu", lighting=0.5,
                                flip=False, mean="none")
    (a, _), (b, _) = next(iter(plain)), next(iter(lit))
    shift = (b - a).numpy()  # (N, 3, 32, 32): constant per image and channel
    assert np.allclose(shift, shift[:, :, :1, :1], atol=1e-4)
    assert np.abs(shift).max() > 1.0 and len({tuple(np.round(s[:, 0, 0], 3)) for s in shift}) == 4


def test_val_centre_crop_no_flip_no_lighting(dataset):
    ds = pipeline.open_dataset(dataset)
    loader = pipeline.build_loader(dataset, "val", batch_size=3, crop=27, device="cpu", lighting=0.5)
    seen = []
    for step, (x, y) in enumerate(run_epoch(loader)):
        for k, i in enumerate(loader.indices(0, step)):
            np.testing.assert_allclose(x[k].numpy(), reference(ds, "val", i, 2, 2, False, np.zeros(3), 27, "pixel"),
                                       atol=2e-4)
            seen.append(int(i))
    assert seen == list(range(len(ds["val"])))  # val is not shuffled, not dropped


@pytest.mark.parametrize("channels_last", [False, True])
def test_ten_crop(dataset, channels_last):
    ds = pipeline.open_dataset(dataset)
    loader = pipeline.build_loader(dataset, "val", batch_size=4, crop=20, device="cpu", ten_crop=True,
                                   channels_last=channels_last)
    x, y = next(iter(loader))
    assert x.shape == (4, 10, 3, 20, 20)
    # what the evaluation feeds the model: channels_last when the run is, without a copy
    assert x.flatten(0, 1).is_contiguous(memory_format=torch.channels_last if channels_last
                                         else torch.contiguous_format)
    corners = [(0, 0), (12, 0), (0, 12), (12, 12), (6, 6)]
    for k in range(4):
        for c, (cx, cy) in enumerate(corners):
            for m in (0, 1):
                ref = reference(ds, "val", k, cx, cy, bool(m), np.zeros(3), 20, "pixel")
                np.testing.assert_allclose(x[k, c + 5 * m].numpy(), ref, atol=2e-4)


def test_crop_equal_to_size_is_identity_and_crop_one_works(dataset):
    ds = pipeline.open_dataset(dataset)
    full = pipeline.build_loader(dataset, "val", batch_size=2, crop=32, device="cpu", mean="none")
    x, _ = next(iter(full))
    np.testing.assert_array_equal(x[0].numpy(), ds["val"][0][0].transpose(2, 0, 1).astype(np.float32))
    one = pipeline.build_loader(dataset, "train", batch_size=2, crop=1, device="cpu")
    assert next(iter(one))[0].shape == (2, 3, 1, 1)


def gather(dataset, split, dp_size, batch_size, epoch=0, **kw):
    """Per rank, the list of per-step sample-index lists, checked against the labels returned."""
    ranks = []
    ds = pipeline.open_dataset(dataset)
    for r in range(dp_size):
        loader = pipeline.build_loader(dataset, split, batch_size=batch_size, crop=8, device="cpu",
                                       dp_rank=r, dp_size=dp_size, **kw)
        steps = []
        for step, (x, y) in enumerate(run_epoch(loader, epoch)):
            idx = loader.indices(epoch, step)
            assert len(x) == len(idx) == len(y)
            assert y.tolist() == [ds[split][int(i)][1] for i in idx]
            steps.append([int(i) for i in idx])
        assert len(steps) == len(loader)
        ranks.append(steps)
    assert len({len(s) for s in ranks}) == 1, "all ranks must run the same number of steps"
    return ranks


# Both sample orders (sampler.py): one permutation of the split, or blocks of 2 shards (the
# dataset has 5 samples a shard, one partial) shuffled within.
ORDERS = {"global": {}, "block": {"data_order": "block", "block_shards": 2}}


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dp_size", [2, 3])
@pytest.mark.parametrize("split,kw", [("train", {"drop_last": False}), ("val", {})])
def test_exactly_once_across_ranks(dataset, dp_size, split, kw, order):
    n = len(pipeline.open_dataset(dataset)[split])
    ranks = gather(dataset, split, dp_size, batch_size=3, **kw, **ORDERS[order])
    everything = [i for steps in ranks for batch in steps for i in batch]
    assert sorted(everything) == list(range(n))


def test_train_drops_the_last_partial_global_batch_by_default(dataset):
    ranks = gather(dataset, "train", 2, batch_size=5)  # 24 samples, global batch 10: 2 steps
    assert [len(b) for b in ranks[0]] == [5, 5]
    assert len({i for steps in ranks for b in steps for i in b}) == 20


@pytest.mark.parametrize("order", ORDERS)
def test_global_batches_and_decisions_do_not_depend_on_dp_size(dataset, order):
    one = gather(dataset, "train", 1, batch_size=6, drop_last=False, **ORDERS[order])
    two = gather(dataset, "train", 2, batch_size=3, drop_last=False, **ORDERS[order])
    three = gather(dataset, "train", 3, batch_size=2, drop_last=False, **ORDERS[order])
    for step in range(len(one[0])):
        assert one[0][step] == two[0][step] + two[1][step] == sum((r[step] for r in three), [])
    # And each sample gets the same pixels whatever the layout.
    outs = {}
    for dp_size, bs in ((1, 6), (2, 3)):
        for r in range(dp_size):
            loader = pipeline.build_loader(dataset, "train", batch_size=bs, crop=24, device="cpu",
                                           dp_rank=r, dp_size=dp_size, seed=5, **ORDERS[order])
            for step, (x, _) in enumerate(run_epoch(loader, 2)):
                for k, i in enumerate(loader.indices(2, step)):
                    outs.setdefault(int(i), []).append(x[k])
    assert all(len(v) == 2 and torch.equal(v[0], v[1]) for v in outs.values())


def test_reshuffle_and_determinism(dataset):
    a = gather(dataset, "train", 1, batch_size=4, epoch=0)
    b = gather(dataset, "train", 1, batch_size=4, epoch=0)
    c = gather(dataset, "train", 1, batch_size=4, epoch=1)
    d = gather(dataset, "train", 1, batch_size=4, epoch=0, seed=9)
    assert a == b and a != c and a != d
    x1 = run_epoch(pipeline.build_loader(dataset, "train", batch_size=4, crop=24, device="cpu"), 0)
    x2 = run_epoch(pipeline.build_loader(dataset, "train", batch_size=4, crop=24, device="cpu"), 0)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(x1, x2))


@pytest.mark.parametrize("order", ORDERS)
def test_mid_epoch_resume_yields_exactly_the_rest(dataset, order):
    kw = dict(batch_size=3, crop=24, device="cpu", seed=2, **ORDERS[order])
    full = run_epoch(pipeline.build_loader(dataset, "train", **kw), 1)
    first = pipeline.build_loader(dataset, "train", **kw)
    first.set_epoch(1)
    it = iter(first)
    for _ in range(3):
        next(it)
    state = first.state_dict()
    assert state["epoch"] == 1 and state["step"] == 3
    resumed = pipeline.build_loader(dataset, "train", **kw)
    resumed.load_state_dict(state)
    rest = [(x.clone(), y.clone()) for x, y in resumed]
    assert len(rest) == len(full) - 3
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(rest, full[3:]))
    assert resumed.state_dict()["epoch"] == 2 and resumed.state_dict()["step"] == 0
    other = pipeline.build_loader(dataset, "train", **dict(kw, batch_size=4))
    with pytest.raises(LoaderError, match="global batch"):
        other.load_state_dict(state)
    flipped = {"data_order": "global"} if order == "block" else ORDERS["block"]
    other = pipeline.build_loader(dataset, "train", **dict(kw, **flipped))
    with pytest.raises(LoaderError, match="data_order"):
        other.load_state_dict(state)


def test_block_order_takes_whole_shards_in_blocks_and_shuffles_within():
    """Hand-made shard bounds: each block's samples are exactly the samples of block_shards whole
    shards; every index once; the order depends on (seed, epoch) only."""
    from pipeline.load.sampler import Sampler
    starts = np.array([0, 5, 10, 15, 20, 24])  # 5 shards, the last partial
    sampler = Sampler(24, 4, 0, 1, seed=3, shuffle=True, drop_last=False, shard_starts=starts,
                      block_shards=2)
    order = sampler.order(0)
    assert sorted(order.tolist()) == list(range(24))
    shard = np.searchsorted(starts, order, side="right") - 1
    pos, blocks = 0, []
    while pos < len(order):  # cut the order where the shards of a block are used up
        members = set()
        end = pos
        while end < len(order) and (len(members) < 2 or shard[end] in members):
            members.add(int(shard[end]))
            end += 1
        size = sum(int(starts[k + 1] - starts[k]) for k in members)
        assert end - pos == size, (order, pos, members)  # the block is exactly those shards
        blocks.append(members)
        pos = end
    assert [len(b) for b in blocks] == [2, 2, 1] and set().union(*blocks) == set(range(5))
    assert not all((np.diff(order[:10]) == 1))  # shuffled within the block
    again = Sampler(24, 8, 1, 3, seed=3, shuffle=True, drop_last=False, shard_starts=starts, block_shards=2)
    assert np.array_equal(again.order(0), order) and not np.array_equal(sampler.order(1), order)


@pytest.mark.parametrize("mean", ["pixel", "channel"])  # whole images; windows cut by the gather
def test_outputs_are_dropped_by_the_worker_threads_and_never_pile_up(dataset, monkeypatch, mean):
    """Each batch's DALI outputs, released by the loader, are dropped by a gather thread two
    batches later (so freeing them is not the training thread's work), at most HELD of them held
    at any step, every one dropped by close(); batches the consumer keeps stay intact."""
    import threading
    from pipeline.load import gather as gather_mod
    from pipeline.load.feed import Feed

    dropped = []

    class Probe:  # stands for a batch's outputs: records the thread that drops it
        def __init__(self, keep):
            self.keep = keep

        def __del__(self):
            dropped.append(threading.current_thread().name)

    done = Feed.done
    monkeypatch.setattr(Feed, "done", lambda self, event=None, keep=None: done(self, event, Probe(keep)))
    monkeypatch.setattr(gather_mod, "INLINE", 0)  # these small batches go to the threads too
    loader = pipeline.build_loader(dataset, "val", batch_size=2, crop=24, device="cpu", mean=mean)
    ref = run_epoch(pipeline.build_loader(dataset, "val", batch_size=2, crop=24, device="cpu", mean=mean))
    kept, steps = [], 0
    for epoch in range(2):
        loader.set_epoch(epoch)
        for batch in loader:
            kept.append(batch)
            steps += 1
            assert len(loader._feed.gatherer._held) <= gather_mod.HELD
    assert steps == 2 * len(ref) and len(ref) >= 4
    workers = sum(name.startswith("gather") for name in dropped)
    assert workers >= steps - gather_mod.HELD - 1, dropped  # the last ones go at close
    loader.close()
    assert len(dropped) >= steps
    for (x, y), (rx, ry) in zip(kept, ref + ref):  # what the consumer kept was never freed
        assert torch.equal(x, rx) and torch.equal(y, ry)


def test_rank_bounds_split_each_global_batch_as_numpy_does():
    """Each rank's share of a step, as positions in the order, against the global batch cut by
    NumPy's array_split (full batches: equal slices; the last, partial one: sizes differing by at
    most one, the first ranks larger), for every step of sizes that leave each kind of remainder."""
    from pipeline.load.sampler import Sampler
    for n, batch, dp in ((24, 4, 1), (24, 5, 2), (23, 3, 3), (7, 2, 3), (10, 4, 4), (3, 1, 3)):
        order = np.random.default_rng(n).permutation(n)
        for drop_last in (True, False):
            samplers = [Sampler(n, batch, r, dp, seed=0, shuffle=True, drop_last=drop_last) for r in range(dp)]
            for step in range(len(samplers[0])):
                whole = order[step * batch * dp:(step + 1) * batch * dp]
                expected = np.array_split(whole, dp)
                for r, s in enumerate(samplers):
                    assert s.indices(order, step).tolist() == expected[r].tolist(), (n, batch, dp, step, r)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dtypes(dataset, dtype):
    ref = next(iter(pipeline.build_loader(dataset, "val", batch_size=2, crop=24, device="cpu")))[0]
    x = next(iter(pipeline.build_loader(dataset, "val", batch_size=2, crop=24, device="cpu", dtype=dtype)))[0]
    assert x.dtype == dtype
    torch.testing.assert_close(x.float(), ref, atol=0.6, rtol=1e-2)


def test_channels_last(dataset):
    ref = next(iter(pipeline.build_loader(dataset, "train", batch_size=4, crop=24, device="cpu")))[0]
    x = next(iter(pipeline.build_loader(dataset, "train", batch_size=4, crop=24, device="cpu",
                                        channels_last=True)))[0]
    assert x.shape == ref.shape and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, ref)


@pytest.fixture(scope="module")
def jpeg_dataset(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("jpeg") / "jpeg"
    convert(tree, out, size=32, encoding="jpeg", shard_size=6, workers=1, progress=False)
    return out


@pytest.mark.parametrize("mean,crop,threaded", [("pixel", 24, False), ("channel", 21, False),
                                               ("none", 17, True)])
def test_jpeg_dataset_decoded_by_dali_matches_pillow(jpeg_dataset, mean, crop, threaded, monkeypatch):
    """Only each crop window is decoded (DALI's ROI decode): the pixels of Pillow's whole-image
    decode at that window, over the whole epoch (windows at every offset, both flips), val too.
    The payloads reach DALI zero-padded in one array, copied on the calling thread or, as large
    batches are (``threaded``), by the worker threads."""
    from pipeline.load import gather
    monkeypatch.setattr(gather, "MIN_PART", 1 if threaded else 1 << 40)
    ds = pipeline.open_dataset(jpeg_dataset)
    loader = pipeline.build_loader(jpeg_dataset, "train", batch_size=4, crop=crop, device="cpu",
                                   seed=1, mean=mean, drop_last=False)
    _, d = loader.plan(0)
    for step, (x, _) in enumerate(run_epoch(loader)):
        for k, i in enumerate(loader.indices(0, step)):
            ref = reference(ds, "train", i, d.crop_x[i], d.crop_y[i], d.flip[i], d.alpha[i], crop, mean)
            np.testing.assert_allclose(x[k].numpy(), ref, atol=2e-4)  # DALI's CPU decode == Pillow's
    val = pipeline.build_loader(jpeg_dataset, "val", batch_size=3, crop=crop, device="cpu", mean=mean)
    c = (32 - crop) // 2
    for step, (x, _) in enumerate(run_epoch(val)):
        for k, i in enumerate(val.indices(0, step)):
            ref = reference(ds, "val", i, c, c, False, np.zeros(3), crop, mean)
            np.testing.assert_allclose(x[k].numpy(), ref, atol=2e-4)


@pytest.mark.parametrize("kwargs,match", [
    ({"crop": 33}, "crop must be an integer in 1..32"),
    ({"dp_rank": 2, "dp_size": 2}, "dp_rank must be in 0..1"),
    ({"dp_size": 9, "split": "val"}, "8 samples cannot be shared by 9"),
    ({"split": "test"}, "unknown split 'test'"),
    ({"mean": "image"}, "mean must be one of"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"dtype": torch.int8}, "dtype must be one of"),
    ({"lighting": -1.0}, "lighting"),
    ({"lighting_form": "lambda"}, "lighting_form"),
])
def test_bad_arguments_fail_before_work(dataset, kwargs, match):
    kw = dict(split="train", batch_size=4, crop=24, device="cpu")
    kw.update(kwargs)
    split = kw.pop("split")
    with pytest.raises(LoaderError, match=match):
        pipeline.build_loader(dataset, split, **kw)


def test_dataset_of_another_version_is_refused(dataset, tmp_path):
    import json
    import shutil
    copy = tmp_path / "old"
    shutil.copytree(dataset, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["version"] = 0
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(pipeline.FormatError, match="version 0"):
        pipeline.build_loader(copy, "train", batch_size=4, device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_requested_without_cuda(dataset):
    with pytest.raises(LoaderError, match="CUDA is not available"):
        pipeline.build_loader(dataset, "train", batch_size=4, crop=24, device="cuda")


# -- the feed: one pipeline, a ring of reused buffers, clean shutdown -------------------------------

@pytest.mark.parametrize("threaded", [True, False])
def test_held_batches_keep_their_pixels_while_the_ring_is_reused(dataset, monkeypatch, threaded):
    """Every yielded batch is kept (no clone) while later ones are gathered into the same few
    buffers: none may change under the consumer, across an epoch boundary too. ``threaded``:
    gathered by the worker threads (as large batches are), else on the calling thread."""
    from pipeline.load import gather
    monkeypatch.setattr(gather, "MIN_PART", 1 if threaded else 1 << 40)
    ds = pipeline.open_dataset(dataset)
    loader = pipeline.build_loader(dataset, "train", batch_size=3, crop=24, device="cpu", seed=4,
                                   mean="none", lighting=0.0, prefetch=1, num_threads=2)
    held = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        held += [(epoch, step, x, y) for step, (x, y) in enumerate(loader)]
    slots = len(loader._feed.gatherer.buffers)
    assert slots == 2 and len(held) == 16 > slots  # each buffer refilled 8 times
    for epoch, step, x, y in held:
        _, d = loader.plan(epoch)
        for k, i in enumerate(loader.indices(epoch, step)):
            ref = reference(ds, "train", i, d.crop_x[i], d.crop_y[i], d.flip[i], np.zeros(3), 24, "none")
            np.testing.assert_array_equal(x[k].numpy(), ref.astype(np.float32))
            assert y[k] == ds["train"][int(i)][1]


def test_one_pipeline_for_the_loaders_life(dataset):
    """Epochs, an abandoned epoch and a resume change what is fed, never the graph."""
    loader = pipeline.build_loader(dataset, "train", batch_size=4, crop=24, device="cpu", seed=1)
    first = run_epoch(loader, 0)
    pipe = loader._feed.pipe
    it = iter(loader)
    next(it)
    del it  # abandoned mid-epoch: its scheduled batches are drained, not left in DALI's queues
    loader.load_state_dict({"epoch": 0, "step": 0, "seed": 1, "global_batch": 4})
    again = run_epoch(loader, 0)
    assert loader._feed.pipe is pipe
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(first, again))


def test_feed_alone_yields_the_stored_bytes(dataset):
    ds = pipeline.open_dataset(dataset)
    from tools.bench.graphs import feed_pipeline
    loader = pipeline.build_loader(dataset, "val", batch_size=3, crop=32, device="cpu", graph=feed_pipeline)
    for step, (x, y) in enumerate(run_epoch(loader)):
        idx = loader.indices(0, step)
        np.testing.assert_array_equal(x.numpy(), np.stack([ds["val"][int(i)][0] for i in idx]))
        assert y.dtype == torch.int64 and y.tolist() == [ds["val"][int(i)][1] for i in idx]


def test_handoff_graph_reads_the_fed_batch(dataset):
    """The benchmark's feed row (tools/bench/graphs.py): the shapes of what was fed, and labels."""
    from tools.bench.graphs import handoff_pipeline

    ds = pipeline.open_dataset(dataset)
    loader = pipeline.build_loader(dataset, "val", batch_size=3, crop=32, device="cpu", graph=handoff_pipeline)
    for step, (x, y) in enumerate(run_epoch(loader)):
        idx = loader.indices(0, step)
        assert x.tolist() == [[ds.size, ds.size, 3]] * len(idx)
        assert y.tolist() == [ds["val"][int(i)][1] for i in idx]


def test_whole_batch_inputs_are_dense_named_arrays(dataset):
    """One (B, ...) array per input, whatever the batch size: what feed_input hands DALI. The
    labels are not among them (a step's labels are a slice of the epoch's, not DALI's output)."""
    loader = pipeline.build_loader(dataset, "train", batch_size=5, crop=24, device="cpu")
    idx, arrays = loader.inputs(0, 1)
    assert sorted(arrays) == ["crop_x", "crop_y", "flip", "shift"]
    shapes = {k: (v.shape, v.dtype, v.flags.c_contiguous) for k, v in arrays.items()}
    assert shapes == {"crop_x": ((5,), np.float32, True),
                      "crop_y": ((5,), np.float32, True), "flip": ((5,), np.int32, True),
                      "shift": ((5, 3), np.float32, True)}
    # crop_mirror_normalize's crop_pos is a fraction of the room (32 - 24 = 8 px): 0..1
    assert ((arrays["crop_x"] >= 0) & (arrays["crop_x"] <= 1)).all() and len(idx) == 5


SHUTDOWN = """
import sys, pipeline
loader = pipeline.build_loader(sys.argv[1], "train", batch_size=4, crop=24, device="cpu")
it = iter(loader)
next(it)
if sys.argv[2] == "mid-epoch":
    del it, loader
elif sys.argv[2] == "epoch-end":
    for _ in it:
        pass
    del it, loader
elif sys.argv[2] == "epoch-end-exit":  # the next epoch's first batches are in flight at exit
    for _ in it:
        pass
elif sys.argv[2] == "close":
    loader.close()
    loader.close()
print("done", flush=True)
"""


@pytest.mark.parametrize("when", ["mid-epoch", "epoch-end", "close", "interpreter-exit", "epoch-end-exit"])
def test_clean_shutdown(dataset, when):
    """Deleting a loader (or exiting with one suspended mid-epoch) joins its threads: no
    "terminate called without an active exception" abort, exit status 0."""
    import subprocess
    import sys
    res = subprocess.run([sys.executable, "-c", SHUTDOWN, str(dataset), when], capture_output=True,
                         text=True, timeout=180)
    assert res.returncode == 0 and res.stdout.strip() == "done", res.stderr[-3000:]
    assert "terminate called" not in res.stderr and "Traceback" not in res.stderr, res.stderr[-3000:]


def test_lighting_shift_hand_computed_both_forms():
    """eigval in pixel^2 units; eigvec the identity, so shift_c = alpha_c * scale_c by hand."""
    from pipeline.load.augment import lighting_shift
    alpha = np.array([[0.1, -0.2, 0.3]])
    eigval, eigvec = np.array([400.0, 100.0, 25.0]), np.eye(3)
    np.testing.assert_allclose(lighting_shift(alpha, eigval, eigvec, "code"),
                               [[2.0, -2.0, 1.5]])  # 0.1 * 20, -0.2 * 10, 0.3 * 5
    np.testing.assert_allclose(lighting_shift(alpha, eigval, eigvec, "paper"),
                               [[40 / 255, -20 / 255, 7.5 / 255]])  # 0.1 * 400 / 255, ...
    # ImageNet's leading eigenvalue, 0.2175 for [0, 1] pixels = 14,143 pixel^2: with alpha's std
    # 0.1, one std of the shift is 0.1 * sqrt(14143) = 11.9 grey levels (code) and
    # 0.1 * 14143 / 255 = 5.5 (paper), DESIGN.md's ~12 and ~5.
    big = np.array([[0.1, 0.0, 0.0]])
    lead = np.array([14143.0, 0.0, 0.0])
    assert abs(lighting_shift(big, lead, eigvec, "code")[0, 0] - 11.89) < 0.01
    assert abs(lighting_shift(big, lead, eigvec, "paper")[0, 0] - 5.546) < 0.01


@pytest.mark.parametrize("form,expected", [("code", [2.0, -2.0, 1.5]),
                                           ("paper", [40 / 255, -20 / 255, 7.5 / 255])])
def test_loader_adds_the_hand_computed_lighting_shift(dataset, form, expected):
    """Through the DALI graph: alpha fixed, known eigenvalues, the output moves by the shift
    computed by hand, the same for every pixel of a channel."""
    from dataclasses import replace
    kw = dict(batch_size=4, crop=24, device="cpu", seed=2, mean="none", lighting_form=form)
    plain = pipeline.build_loader(dataset, "train", lighting=0.0, **kw)
    lit = pipeline.build_loader(dataset, "train", lighting=0.1, **kw)
    lit.stats = dict(lit.stats, eigval=np.array([400.0, 100.0, 25.0]), eigvec=np.eye(3))
    order, d = lit.plan(0)
    lit._plans[0] = (order, replace(d, alpha=np.tile([0.1, -0.2, 0.3], (len(d.alpha), 1))))
    (a, _), (b, _) = next(iter(plain)), next(iter(lit))
    shift = (b - a).numpy()  # (4, 3, 24, 24)
    np.testing.assert_allclose(shift, np.broadcast_to(np.array(expected, np.float32)[None, :, None, None],
                                                      shift.shape), atol=1e-4)


def test_one_device_rule_for_loader_trainer_and_benchmarks():
    from pipeline.device import DeviceError, resolve_device
    from tools.bench.model import _device
    from trainer.parallel import init_distributed
    assert resolve_device("cpu") == torch.device("cpu") == _device("cpu")
    # "auto" on this machine: the loader, the trainer and the benchmark agree (whatever it is)
    assert resolve_device("auto") == _device("auto") == init_distributed(1, "auto").device
    assert init_distributed(1, "cpu").device == torch.device("cpu")
    for bad in ("tpu", "gpu0", 3.5):
        with pytest.raises(DeviceError, match="device must be 'auto', 'cuda' or 'cpu'"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        for call in (lambda: resolve_device("cuda", index=1), lambda: _device("cuda"),
                     lambda: init_distributed(1, "cuda")):
            with pytest.raises(DeviceError, match="CUDA is not available"):
                call()


def test_default_threads_share_this_process_cpus_among_the_local_ranks(monkeypatch, dataset):
    """Not torch's thread count: torchrun sets OMP_NUM_THREADS=1 for several ranks per node."""
    from pipeline.load import loader as loader_mod
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # what torchrun leaves
    monkeypatch.setattr(loader_mod.os, "sched_getaffinity", lambda pid: set(range(16)))
    for local, expected in ((None, 8), ("1", 8), ("2", 8), ("4", 4), ("8", 2), ("16", 1), ("32", 1)):
        if local is None:
            monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
        n, why = loader_mod.default_threads()
        assert n == expected, (local, n)
        assert "16 CPUs" in why
    monkeypatch.setattr(loader_mod.os, "sched_getaffinity", lambda pid: {3, 5, 7})  # taskset / cgroup
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert loader_mod.default_threads()[0] == 3
    assert pipeline.build_loader(dataset, "train", batch_size=4, crop=24, device="cpu").num_threads == 3


def test_a_driver_too_old_for_the_dali_wheel_is_one_line_before_any_work():
    from pipeline.device import DeviceError, check_driver, dali_cuda
    assert dali_cuda() == (13, 0)  # setup.py pins nvidia-dali-cuda130
    check_driver(needed=(13, 0), have=(13, 0))
    check_driver(needed=(13, 0), have=(13, 2))
    check_driver(needed=(13, 0), have=None)  # unknown (no CUDA build of torch): nothing to say
    with pytest.raises(DeviceError) as e:
        check_driver(needed=(13, 0), have=(12, 8))
    msg = str(e.value)
    assert "\n" not in msg and "nvidia-dali-cuda130" in msg and "CUDA 12.8" in msg and "R580" in msg


def test_the_driver_version_is_read_from_the_driver_itself(monkeypatch):
    """The H200 lent on 2026-12-04 reported no driver version through torch, so the check above
    never ran on a GPU: the reading is now libcuda's cuDriverGetVersion (a stand-in here)."""
    import ctypes

    from pipeline import device

    class Driver:  # libcuda.so.1 of an R550 driver (CUDA 12.4): cuDriverGetVersion -> 12040
        def cuDriverGetVersion(self, out):
            out._obj.value = 12040
            return 0

    monkeypatch.setattr(ctypes, "CDLL", lambda name: Driver() if name == "libcuda.so.1" else None)
    assert device.driver_cuda() == (12, 4)
    with pytest.raises(device.DeviceError, match="this driver supports CUDA 12.4"):
        device.check_driver(needed=(13, 0))

    def no_driver(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_driver)
    assert device.driver_cuda() is None
    device.check_driver(needed=(13, 0))  # unknown: nothing to say


def test_mp_pairs_on_gpus_refuse_an_odd_number_of_processes_per_node(monkeypatch):
    from pipeline.errors import UsageError
    from trainer.parallel import init_distributed
    monkeypatch.setenv("WORLD_SIZE", "6")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")  # 2 nodes x 3: the pair (2, 3) spans two nodes
    with pytest.raises(UsageError, match="--nproc_per_node must be a multiple of 2, got 3"):
        init_distributed(2, "cuda")  # raised first: before the device and any process group


def test_batches_arrive_ready_for_the_step(dataset):
    """What the GPU no-sync test (tests/test_gpu.py) needs from the loader, checked on the CPU:
    labels already int64 on the loader's device, images in the run's dtype and memory format,
    so the trainer converts and copies nothing per step."""
    loader = pipeline.build_loader(dataset, "train", batch_size=4, crop=24, device="cpu",
                                   dtype=torch.bfloat16, channels_last=True)
    for x, y in loader:
        assert y.dtype == torch.int64 and y.device == loader.device == x.device
        assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)


def test_batches_run_ahead_into_the_next_epoch_only_when_it_follows(dataset):
    """At an epoch's end the loader already runs the next epoch's first batches; they are used
    if that epoch comes next and dropped if another position is asked for."""
    kw = dict(batch_size=4, crop=24, device="cpu", seed=6)
    fresh = {e: run_epoch(pipeline.build_loader(dataset, "train", **kw), e) for e in (1, 5)}
    loader = pipeline.build_loader(dataset, "train", **kw)
    run_epoch(loader, 0)
    assert loader._feed.head() == (1, 0)  # ahead, before anyone asked
    for epoch in (1, 5):  # 1 follows (its batches are used), 5 does not (they are dropped)
        got = run_epoch(loader, epoch)
        assert len(got) == len(fresh[epoch])
        assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(got, fresh[epoch]))


def test_the_loader_names_its_position(dataset):
    """``last``: the (epoch, step) yielded last; ``epoch_done``: whether an epoch was yielded whole
    (what the trainer asks at an epoch's end, instead of decoding state_dict())."""
    loader = pipeline.build_loader(dataset, "train", batch_size=4, crop=24, device="cpu")  # 6 steps
    assert loader.last is None and not loader.epoch_done(0)
    it = iter(loader)
    next(it), next(it)
    assert loader.last == (0, 1) and not loader.epoch_done(0)
    del it
    loader.set_epoch(0)
    for _ in loader:
        pass
    assert loader.last == (0, 5) and loader.epoch_done(0) and not loader.epoch_done(1)


def test_another_graph_needs_raw_payloads(tree, tmp_path):
    from pipeline.load.loader import LoaderError
    from tools.bench.graphs import feed_pipeline
    jpeg = tmp_path / "jpeg"
    convert(tree, jpeg, size=32, encoding="jpeg", workers=1, progress=False)
    with pytest.raises(LoaderError, match="graph= .* needs a raw dataset"):
        pipeline.build_loader(jpeg, "val", batch_size=3, crop=32, device="cpu", graph=feed_pipeline)


def _planning_threads(monkeypatch) -> dict:
    """{epoch: the name of the thread that drew its decisions}, filled as the loader plans."""
    import threading

    from pipeline.load import loader as loader_module
    from pipeline.load.sampler import decisions
    where = {}

    def spy(n, seed, epoch, *args, **kw):
        where.setdefault(epoch, threading.current_thread().name)
        return decisions(n, seed, epoch, *args, **kw)

    monkeypatch.setattr(loader_module, "decisions", spy)
    return where


def test_the_next_epoch_is_planned_off_the_training_thread(dataset, monkeypatch):
    """From the middle of an epoch the next one's order, decisions and arrays are made on the
    planner thread, so the training thread does no O(N) work at the boundary (0.2-1 s for
    ImageNet, BENCHMARKS.md); its batches still match the NumPy reference drawn from
    (seed, epoch) directly."""
    import threading

    from pipeline.load.sampler import decisions
    where = _planning_threads(monkeypatch)
    ds = pipeline.open_dataset(dataset)
    n = len(ds["train"])
    loader = pipeline.build_loader(dataset, "train", batch_size=5, crop=24, device="cpu", seed=7,
                                   lighting=0.1, mean="pixel", drop_last=False)
    for epoch in range(3):
        batches = run_epoch(loader, epoch)
        order = np.random.default_rng([7, epoch, 0]).permutation(n)
        d = decisions(n, 7, epoch, ds.size, 24, True, 0.1, random=True)
        got = torch.cat([x for x, _ in batches])
        assert len(got) == n
        for k, i in enumerate(order):
            ref = reference(ds, "train", i, d.crop_x[i], d.crop_y[i], d.flip[i], d.alpha[i], 24, "pixel")
            np.testing.assert_allclose(got[k].numpy(), ref, rtol=0, atol=2e-4)
    assert where[0] == threading.main_thread().name  # the first is needed at once
    assert where[1].startswith("plan") and where[2].startswith("plan"), where
    assert where[3].startswith("plan")  # the epoch after the last one run, planned ahead as well
    loader.close()
    assert loader._planner is None


@pytest.mark.parametrize("batch_size", [3, 14])  # 8 steps an epoch; 1 (epochs overlap in the run-ahead)
def test_labels_are_the_epochs_order_and_the_consumers_own(dataset, batch_size):
    """A step's labels come from the epoch's order, not through DALI: every epoch in a row (the
    feed running ahead across boundaries, the next epoch planned aside), int64, and tensors the
    consumer may overwrite without changing what a rerun of the epoch yields."""
    ds = pipeline.open_dataset(dataset)
    truth = np.array([ds["train"][i][1] for i in range(len(ds["train"]))])
    loader = pipeline.build_loader(dataset, "train", batch_size=batch_size, crop=24, device="cpu",
                                   seed=4)
    steps = len(truth) // batch_size
    for epoch in range(4):
        order = np.random.default_rng([4, epoch, 0]).permutation(len(truth))[:steps * batch_size]
        loader.set_epoch(epoch)
        got = [y for _, y in loader]  # the loader's own tensors, not clones
        assert len(got) == steps and all(y.dtype == torch.int64 for y in got)
        assert torch.cat(got).tolist() == truth[order].tolist()
        for y in got:
            y.fill_(-1)
    loader.set_epoch(3)  # the last epoch again: its arrays are still held
    again = torch.cat([y for _, y in loader])
    assert again.tolist() == truth[order].tolist()


def test_a_resume_past_the_middle_still_plans_the_next_epoch_aside(dataset, monkeypatch):
    where = _planning_threads(monkeypatch)
    loader = pipeline.build_loader(dataset, "train", batch_size=3, crop=24, device="cpu", seed=2)
    steps = len(loader)
    assert steps >= 4
    loader.load_state_dict(dict(loader.state_dict(), step=steps - 1))  # the last step of epoch 0
    assert len(list(loader)) == 1
    assert len(run_epoch(loader, 1)) == steps
    assert where[1].startswith("plan"), where
    loader.close()
