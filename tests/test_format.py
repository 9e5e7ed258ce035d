"""Round trips through the real writer and reader; the documented layout read by numpy alone;
every damaged-file case gives one clear error naming the file."""
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

import pipeline
from pipeline import FormatError
from pipeline.prepare.convert import convert
from pipeline.prepare.preprocess import to_rgb_square

# The shard header as README.md documents it, written out independently of pipeline/format.py.
README_HEADER = np.dtype([("magic", "S8"), ("version", "<u4"), ("encoding", "<u4"), ("count", "<u4"),
                          ("height", "<u4"), ("width", "<u4"), ("channels", "<u4"),
                          ("labels_offset", "<u8"), ("index_offset", "<u8"), ("data_offset", "<u8"),
                          ("sources_offset", "<u8")])


def test_round_trip_every_sample(tree, dataset):
    ds = pipeline.open_dataset(dataset, verify=True)
    assert ds.classes == sorted(p.name for p in (tree / "train").iterdir())
    for split, per_class in (("train", 6), ("val", 2)):
        data = ds[split]
        assert len(data) == 4 * per_class
        seen = set()
        for i in range(len(data)):
            img, label = data[i]
            source = data.source(i)
            seen.add(source)
            assert source.startswith(f"{split}/{ds.classes[label]}/")
            np.testing.assert_array_equal(img, to_rgb_square((tree / source).read_bytes(), 32))
        assert seen == {p.relative_to(tree).as_posix() for p in (tree / split).rglob("*.JPEG")}


def test_train_order_is_class_mixed_and_val_sorted(dataset):
    ds = pipeline.open_dataset(dataset)
    train_sources = [ds["train"].source(i) for i in range(len(ds["train"]))]
    assert train_sources != sorted(train_sources)
    val_sources = [ds["val"].source(i) for i in range(len(ds["val"]))]
    assert val_sources == sorted(val_sources)


def test_numpy_alone_reads_a_raw_shard(dataset):
    manifest = json.loads((dataset / "manifest.json").read_text())
    entry = manifest["splits"]["train"]["shards"][0]
    raw = (dataset / entry["file"]).read_bytes()
    h = np.frombuffer(raw, README_HEADER, count=1)[0]
    assert h["magic"] == b"ALXSHRD" and h["version"] == 1 and h["encoding"] == 0
    n, s = int(h["count"]), int(h["height"])
    labels = np.frombuffer(raw, "<i4", n, int(h["labels_offset"]))
    images = np.frombuffer(raw, np.uint8, n * s * s * 3, int(h["data_offset"])).reshape(n, s, s, 3)
    sources = json.loads(raw[int(h["sources_offset"]):])
    ds = pipeline.open_dataset(dataset)
    for i in range(n):
        img, label = ds["train"][i]
        np.testing.assert_array_equal(images[i], img)
        assert labels[i] == label and sources[i] == ds["train"].source(i)


def test_jpeg_encoding_round_trip(tree, tmp_path):
    out = tmp_path / "jpeg"
    convert(tree, out, size=32, encoding="jpeg", quality=95, shard_size=7, workers=1, progress=False)
    ds = pipeline.open_dataset(out, verify=True)
    assert ds.encoding == "jpeg"
    for i in range(len(ds["train"])):
        img, _ = ds["train"][i]
        shard, j = ds["train"].locate(i)
        payload = shard.encoded(j)
        assert payload[:2] == b"\xff\xd8"  # a standalone JPEG file, decodable by any library
        np.testing.assert_array_equal(img, np.asarray(Image.open(io.BytesIO(payload)).convert("RGB")))
        ref = to_rgb_square((tree / ds["train"].source(i)).read_bytes(), 32).astype(float)
        # Lossy with 4:2:0 chroma on 32 px noisy texture: the same picture, not the same bits.
        assert 10 * np.log10(255 ** 2 / np.mean((img - ref) ** 2)) > 22


@pytest.fixture
def copy(dataset, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(dataset, dst)
    return dst


def _shard(copy, k=0):
    return copy / json.loads((copy / "manifest.json").read_text())["splits"]["train"]["shards"][k]["file"]


def test_missing_manifest(copy):
    (copy / "manifest.json").unlink()
    with pytest.raises(FormatError, match="manifest.json: missing"):
        pipeline.open_dataset(copy)


def test_missing_shard(copy):
    path = _shard(copy, 1)
    path.unlink()
    with pytest.raises(FormatError, match=f"{path}: missing"):
        pipeline.open_dataset(copy)


def test_truncated_shard(copy):
    path = _shard(copy)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(FormatError, match=f"{path}: .*truncated"):
        pipeline.open_dataset(copy)


def test_flipped_byte_found_by_verify(copy):
    path = _shard(copy)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    pipeline.open_dataset(copy)  # sizes and headers still fine: only a checksum can tell
    with pytest.raises(FormatError, match=f"{path}: checksum mismatch"):
        pipeline.open_dataset(copy, verify=True)


def test_wrong_magic(copy):
    path = _shard(copy)
    data = bytearray(path.read_bytes())
    data[:8] = b"NOTOURS\x00"
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=f"{path}: not a shard of this format"):
        pipeline.open_dataset(copy)


def test_wrong_shard_version(copy):
    path = _shard(copy)
    data = bytearray(path.read_bytes())
    data[8:12] = (99).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=f"{path}: shard format version 99"):
        pipeline.open_dataset(copy)


def test_wrong_manifest_version(copy):
    m = json.loads((copy / "manifest.json").read_text())
    m["version"] = 0
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(FormatError, match="manifest.json: dataset format version 0"):
        pipeline.open_dataset(copy)


def test_manifest_out_of_step_with_shard(copy):
    m = json.loads((copy / "manifest.json").read_text())
    m["splits"]["train"]["shards"][0]["count"] += 1
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(FormatError, match=f"{_shard(copy)}: holds 5 samples, manifest.json says 6"):
        pipeline.open_dataset(copy)


def test_truncated_stats(copy):
    stats = copy / "stats.npz"
    stats.write_bytes(stats.read_bytes()[:1000])
    with pytest.raises(FormatError, match=f"{stats}: .*truncated"):
        pipeline.open_dataset(copy)


def test_unknown_split_and_index(dataset):
    ds = pipeline.open_dataset(dataset)
    with pytest.raises(KeyError, match="no split 'test'"):
        ds["test"]
    with pytest.raises(IndexError):
        ds["val"][len(ds["val"])]
