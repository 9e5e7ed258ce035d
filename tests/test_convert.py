"""The converter: statistics against NumPy, skipped inputs, determinism, resumption after an
interruption at any point, and refusing to overwrite another dataset."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pipeline
from helpers import noise_tree, tree_digest
from images import encode
from pipeline.prepare import convert as convert_mod
from pipeline.prepare import finalize as finalize_mod
from pipeline.prepare import job as job_mod
from pipeline.prepare import worker as worker_mod
from tools import synthetic
from pipeline.prepare.convert import OutputError, convert
from pipeline.prepare.sources import LayoutError

ROOT = Path(__file__).resolve().parents[1]


def test_stats_against_numpy(dataset):
    ds = pipeline.open_dataset(dataset)
    x = np.stack([ds["train"][i][0] for i in range(len(ds["train"]))]).astype(np.float64)
    pixels = x.reshape(-1, 3)
    mean = pixels.mean(axis=0)
    cov = np.cov(pixels, rowvar=False, bias=True)
    s = ds.stats
    assert int(s["count"]) == len(x)
    np.testing.assert_allclose(s["mean_image"], x.mean(axis=0), rtol=0, atol=1e-4)
    np.testing.assert_allclose(s["channel_mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(s["channel_std"], pixels.std(axis=0), rtol=1e-10)
    np.testing.assert_allclose(s["cov"], cov, rtol=1e-10)
    w, v = np.linalg.eigh(cov)
    np.testing.assert_allclose(s["eigval"], w[::-1], rtol=1e-10)
    for k in range(3):  # eigenvectors are defined up to sign
        np.testing.assert_allclose(np.abs(s["eigvec"][:, k] @ v[:, 2 - k]), 1.0, rtol=1e-8)
        np.testing.assert_allclose(cov @ s["eigvec"][:, k], s["eigval"][k] * s["eigvec"][:, k], atol=1e-6)
    assert s["mean_image"].dtype == np.float32 and s["mean_image"].shape == (32, 32, 3)


@pytest.fixture(scope="module")
def quirky(tmp_path_factory):
    """An ImageFolder tree with every kind of real-world oddity, good and bad."""
    root = tmp_path_factory.mktemp("quirky")
    rng = np.random.default_rng(5)
    photo = synthetic.photo(rng, 120, 90, 1, 3)
    good = {
        "a/cmyk.jpg": encode(Image.fromarray(photo).convert("CMYK"), "JPEG"),
        "a/gray.png": encode(Image.fromarray(photo).convert("L"), "PNG"),
        "a/palette.gif": encode(Image.fromarray(photo).quantize(32), "GIF"),
        "b/rgba.png": encode(Image.fromarray(np.dstack([photo, photo[..., 0]]), "RGBA"), "PNG"),
        "b/deep16.png": encode(Image.fromarray(photo[..., 1].astype(np.uint16) * 257), "PNG"),
        "b/png_named.JPEG": encode(Image.fromarray(photo), "PNG"),
        "b/tiny.bmp": encode(Image.fromarray(photo[:3, :2]), "BMP"),
        "c/pano.webp": encode(Image.fromarray(synthetic.photo(rng, 900, 60, 2, 3)), "WEBP"),
        "c/sub/dir/nested.jpg": synthetic.jpeg_bytes(photo),
    }
    bad = {
        "a/empty.JPEG": b"",
        "b/notes.txt": b"not an image",
        "c/cut.jpg": synthetic.jpeg_bytes(photo)[:100],
    }
    for split in ("train", "val"):
        for rel, data in {**good, **bad}.items():
            path = root / split / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    (root / "train" / "a" / ".DS_Store").write_bytes(b"\0")
    return root, good, bad


def test_quirky_inputs_converted_or_skipped_with_reason(quirky, tmp_path, capsys):
    root, good, bad = quirky
    manifest = convert(root, tmp_path / "out", size=24, shard_size=4, workers=1, progress=False)
    ds = pipeline.open_dataset(tmp_path / "out", verify=True)
    for split in ("train", "val"):
        assert {ds[split].source(i) for i in range(len(ds[split]))} == {f"{split}/{r}" for r in good}
        assert manifest["splits"][split]["skipped"] == len(bad)
    skipped = json.loads((tmp_path / "out" / "skipped.json").read_text())
    reasons = {s["source"]: s["reason"] for s in skipped}
    assert "empty file" in reasons["train/a/empty.JPEG"]
    assert "cannot identify" in reasons["val/b/notes.txt"]
    assert "train/c/cut.jpg" in reasons
    assert reasons["train/a/.DS_Store"] == "hidden file"
    assert len(skipped) == 2 * len(bad) + 1
    err = capsys.readouterr().err
    assert "7 inputs not converted" in err and "empty file" in err


def test_same_inputs_give_identical_bytes_whatever_the_workers(tree, tmp_path):
    convert(tree, tmp_path / "one", size=32, shard_size=5, workers=1, progress=False)
    convert(tree, tmp_path / "two", size=32, shard_size=5, workers=2, progress=False)
    assert tree_digest(tmp_path / "one") == tree_digest(tmp_path / "two")


def test_seed_changes_train_order_only(tree, tmp_path):
    convert(tree, tmp_path / "s0", size=32, shard_size=50, workers=1, progress=False, seed=0)
    convert(tree, tmp_path / "s1", size=32, shard_size=50, workers=1, progress=False, seed=1)
    a, b = (pipeline.open_dataset(tmp_path / s) for s in ("s0", "s1"))
    order = [[d["train"].source(i) for i in range(len(d["train"]))] for d in (a, b)]
    assert order[0] != order[1] and sorted(order[0]) == sorted(order[1])
    np.testing.assert_array_equal(a.stats["mean_image"], b.stats["mean_image"])  # exact sums


class Interrupt(BaseException):
    pass


# 32 inputs (24 train in 5 shards, 8 val in 2) are decoded; atomic_write runs for job.json (1),
# the 7 partial-stats files (2..8), skipped.json (9), stats.npz (10) and manifest.json (11).
@pytest.mark.parametrize("where,stop_at", [
    ("decode", 1), ("decode", 6), ("decode", 13), ("decode", 24), ("decode", 32),
    ("atomic_write", 1), ("atomic_write", 2), ("atomic_write", 5), ("atomic_write", 9),
    ("atomic_write", 10), ("atomic_write", 11), ("finalize", 1)])
def test_interrupted_at_any_point_resumes_to_identical_bytes(tree, dataset, tmp_path, monkeypatch,
                                                             where, stop_at):
    out = tmp_path / "out"
    calls = {"n": 0}
    # every module of the converter that makes the call (the counts above are over all of them)
    places = {"decode": [(worker_mod, "to_rgb_square")],
              "atomic_write": [(job_mod, "atomic_write"), (worker_mod, "atomic_write"),
                               (finalize_mod, "atomic_write")],
              "finalize": [(finalize_mod, "finish_cleanup")]}[where]
    real = getattr(*places[0])

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == stop_at:
            raise Interrupt()
        return real(*args, **kwargs)

    for module, name in places:
        monkeypatch.setattr(module, name, flaky)
    with pytest.raises(Interrupt):
        convert(tree, out, size=32, shard_size=5, workers=1, progress=False)
    for module, name in places:
        monkeypatch.setattr(module, name, real)
    if where != "finalize":  # a kill after manifest.json leaves a complete dataset
        with pytest.raises(pipeline.FormatError, match="unfinished conversion"):
            pipeline.open_dataset(out)
    convert(tree, out, size=32, shard_size=5, workers=1, progress=False)
    assert tree_digest(out) == tree_digest(dataset)


def test_sigkill_then_same_command_gives_identical_bytes(tmp_path):
    src = noise_tree(tmp_path / "src", classes=3, per_class=48)
    cmd = [sys.executable, str(ROOT / "tools" / "prepare_imagenet.py"), str(src)]
    opts = ["--size=64", "--shard_size=4", "--workers=2"]
    clean = tmp_path / "clean"
    subprocess.run(cmd + [str(clean)] + opts, check=True, capture_output=True)
    rng = np.random.default_rng(0)
    interrupted = 0
    for trial in range(4):
        out = tmp_path / f"killed{trial}"
        proc = subprocess.Popen(cmd + [str(out)] + opts, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        while not (out / ".work" / "job.json").exists() and proc.poll() is None:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3))  # the conversion itself takes ~0.5 s here
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        interrupted += not (out / "manifest.json").exists()
        subprocess.run(cmd + [str(out)] + opts, check=True, capture_output=True)
        assert tree_digest(out) == tree_digest(clean)
    assert interrupted >= 2, "the kills landed after the conversion: the test proved nothing"


def test_completed_dataset_is_not_redone(tree, dataset, capsys):
    before = {p: p.stat().st_mtime_ns for p in dataset.rglob("*")}
    convert(tree, dataset, size=32, shard_size=5, workers=1, progress=False)
    assert {p: p.stat().st_mtime_ns for p in dataset.rglob("*")} == before
    assert "already complete" in capsys.readouterr().err


def test_refuses_to_overwrite_a_different_dataset(tree, dataset):
    before = tree_digest(dataset)
    with pytest.raises(OutputError, match="holds a different dataset.*size: 32 there vs 48 now"):
        convert(tree, dataset, size=48, shard_size=5, workers=1, progress=False)
    assert tree_digest(dataset) == before


def test_refuses_a_foreign_non_empty_directory(tree, tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(OutputError, match="not empty"):
        convert(tree, tmp_path, size=32, workers=1, progress=False)
    assert (tmp_path / "mine.txt").read_text() == "precious"


def _leave_unfinished(src, out, monkeypatch):
    """Convert every shard but stop before the manifest: an unfinished job at ``out``."""
    def stop(*a, **k):
        raise Interrupt()

    monkeypatch.setattr(convert_mod, "finalize", stop)  # the name convert.py calls
    with pytest.raises(Interrupt):
        convert(src, out, size=32, shard_size=5, workers=1, progress=False)
    monkeypatch.undo()


def test_refuses_to_resume_with_other_options(tree, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _leave_unfinished(tree, out, monkeypatch)
    with pytest.raises(OutputError, match="unfinished conversion.*seed: 0 there vs 3 now"):
        convert(tree, out, size=32, shard_size=5, workers=1, progress=False, seed=3)


def test_no_layout_is_a_clear_error(tmp_path):
    (tmp_path / "random.txt").write_text("x")
    with pytest.raises(LayoutError, match="no recognised layout.*random.txt"):
        convert(tmp_path, tmp_path / "out", workers=1)


@pytest.mark.parametrize("kwargs,match", [
    ({"size": 0}, "--size"), ({"encoding": "png"}, "--encoding"), ({"quality": 101}, "--quality"),
    ({"shard_size": 0}, "--shard_size"), ({"workers": -1}, "--workers"),
])
def test_bad_options(tree, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        convert(tree, tmp_path / "out", **kwargs)


def test_cli_reports_errors_without_traceback(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "prepare_imagenet.py"),
                          str(tmp_path / "nope"), str(tmp_path / "out")], capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr.startswith("error: ") and "no such directory" in res.stderr
    assert "Traceback" not in res.stderr


def test_resume_refused_when_inputs_changed_in_between(tree, tmp_path, monkeypatch):
    import shutil
    src = tmp_path / "src"
    shutil.copytree(tree, src)
    out = tmp_path / "out"
    _leave_unfinished(src, out, monkeypatch)
    victim = next((src / "train").rglob("*.JPEG"))
    data = victim.read_bytes()
    victim.write_bytes(data)  # same bytes and size, new mtime: "replaced"
    os.utime(victim, ns=(1, 1))
    with pytest.raises(OutputError, match="input files changed"):
        convert(src, out, size=32, shard_size=5, workers=1, progress=False)


# -- checks before any work, and odd trees (issue 12) ---------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    ({"seed": -1}, "--seed must be a non-negative integer, got -1"),
    ({"seed": "abc"}, "--seed must be a non-negative integer, got 'abc'"),
    ({"workers": 0}, "--workers must be a positive integer"),
    ({"size": True}, "--size must be a positive integer, got True"),  # fire's bare --size
])
def test_bad_values_named_before_out_is_claimed(tree, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        convert(tree, tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_an_unfinished_job_with_never_valid_options_does_not_block(tree, tmp_path):
    """What older versions left behind for `--seed=-1`: .work/job.json and nothing else."""
    out = tmp_path / "out"
    (out / ".work").mkdir(parents=True)
    (out / ".work" / "job.json").write_text(json.dumps({"size": 32, "encoding": "raw", "quality": None,
                                                        "shard_size": 5, "seed": -1}))
    convert(tree, out, size=32, shard_size=5, workers=1, progress=False)
    assert pipeline.open_dataset(out).manifest["job"]["seed"] == 0


def test_out_that_is_a_file_is_refused(tree, tmp_path):
    (tmp_path / "out").write_text("precious")
    with pytest.raises(OutputError, match="exists and is a file"):
        convert(tree, tmp_path / "out", size=32, workers=1, progress=False)
    assert (tmp_path / "out").read_text() == "precious"


def test_symlinks_dangling_and_looping_are_listed_not_fatal(tree, tmp_path):
    import shutil
    src = tmp_path / "src"
    shutil.copytree(tree, src)
    cls = sorted((src / "train").iterdir())[0]
    (cls / "gone.JPEG").symlink_to(tmp_path / "nowhere.JPEG")
    (cls / "loop").symlink_to(cls)              # a folder linking to itself
    (cls / "up").symlink_to(src / "train")      # to an ancestor: would relabel other classes
    (src / "train" / "empty_class").mkdir()
    convert(src, tmp_path / "out", size=32, shard_size=50, workers=1, progress=False)
    ds = pipeline.open_dataset(tmp_path / "out")
    assert len(ds["train"]) == sum(1 for _ in (tree / "train").rglob("*.JPEG"))
    reasons = {s["source"]: s["reason"] for s in json.loads((tmp_path / "out" / "skipped.json").read_text())}
    rel = cls.relative_to(src).as_posix()
    assert "dangling symlink" in reasons[f"{rel}/gone.JPEG"]
    assert "symlink loop" in reasons[f"{rel}/loop"] and "symlink loop" in reasons[f"{rel}/up"]
    assert reasons["train/empty_class"] == "empty class folder (no files)"


def test_skipped_json_is_byte_identical_across_runs(quirky, tmp_path):
    root, _, _ = quirky
    for name in ("a", "b"):
        convert(root, tmp_path / name, size=24, shard_size=4, workers=1, progress=False)
    assert (tmp_path / "a" / "skipped.json").read_bytes() == (tmp_path / "b" / "skipped.json").read_bytes()
    assert b" at 0x" not in (tmp_path / "a" / "skipped.json").read_bytes()


def test_a_split_none_of_whose_inputs_convert_is_an_error(tree, tmp_path):
    import shutil
    src = tmp_path / "src"
    shutil.copytree(tree, src)
    for path in (src / "val").rglob("*.JPEG"):
        path.write_bytes(b"not a jpeg")
    with pytest.raises(OutputError, match="val: none of its 8 inputs could be converted"):
        convert(src, tmp_path / "out", size=32, workers=1, progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_second_conversion_into_the_same_out_refuses_at_once(tree, tmp_path, monkeypatch):
    """While one conversion runs (held here inside its first decode), another process started
    on the same OUT refuses at once; the first then finishes normally."""
    out = tmp_path / "out"
    results = {}
    real = worker_mod.to_rgb_square

    def second_conversion_meanwhile(*a, **k):
        if not results:
            results["second"] = subprocess.run(
                [sys.executable, str(ROOT / "tools" / "prepare_imagenet.py"), str(tree), str(out),
                 "--size=32", "--shard_size=5", "--workers=1"], capture_output=True, text=True, timeout=120)
        return real(*a, **k)

    monkeypatch.setattr(worker_mod, "to_rgb_square", second_conversion_meanwhile)
    convert(tree, out, size=32, shard_size=5, workers=1, progress=False)
    second = results["second"]
    assert second.returncode == 1 and "another conversion is writing it right now" in second.stderr, second.stderr
    assert "Traceback" not in second.stderr
    pipeline.open_dataset(out, verify=True)
    assert not (out / ".work").exists()


def test_truncated_jpegs_are_converted_and_listed_with_what_was_missing(tmp_path, capsys):
    from tools.synthetic import photo
    rng = np.random.default_rng(3)
    src = tmp_path / "src"
    whole = encode(Image.fromarray(photo(rng, 200, 160, 0, 2)), "JPEG")
    for cls in ("a", "b"):
        (src / "train" / cls).mkdir(parents=True)
        (src / "train" / cls / "whole.jpg").write_bytes(whole)
    (src / "train" / "b" / "cut.jpg").write_bytes(whole[:len(whole) * 6 // 10])
    manifest = convert(src, tmp_path / "out", size=32, workers=1, progress=False)
    assert manifest["splits"]["train"]["count"] == 3  # converted, not skipped
    [entry] = manifest["splits"]["train"]["truncated"]
    assert entry["source"] == "train/b/cut.jpg"
    # The bottom 40 % of a baseline JPEG is lost: the decoder fills those rows grey.
    rows, of = map(int, re.search(r"(\d+) of (\d+) rows", entry["missing"]).groups())
    assert 0.3 < rows / of < 0.5, entry["missing"]
    assert "train/b/cut.jpg: data ends early" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "skipped.json").read_text()) == []
