"""The ILSVRC-2012 archive layout, end to end: tiny fake archives (a tar of per-class tars, a flat
val tar, a devkit with a MATLAB meta.mat or LOC_val_solution.csv) converted by the real converter
and read back by the real reader.

The fakes reproduce what makes the real archives tricky: the per-class tars are not in sorted
order inside the train tar; the devkit's ILSVRC2012_IDs are not the sorted-wnid order; meta.mat
also lists non-leaf synsets (whose wnids sort before the leaves) that must not become classes;
the val tar's members are not in name order.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.io

import pipeline
from tools import synthetic
from pipeline.prepare.convert import OutputError, convert
from pipeline.prepare.preprocess import to_rgb_square
from pipeline.prepare.sources import LayoutError, detect

SIZE = 32
SHARD = 4
TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
LOC_CSV = "LOC_val_solution.csv"

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475"]  # sorted: label = index
WORDS = {"n01440764": "tench, Tinca tinca", "n01443537": "goldfish, Carassius auratus",
         "n01484850": "great white shark, white shark, man-eater, Carcharodon carcharias",
         "n01491361": "tiger shark, Galeocerdo cuvieri", "n01494475": "hammerhead, hammerhead shark"}
# The devkit's ids, a derangement of the sorted order: id - 1 is the wrong label for every class.
ILSVRC_ID = {"n01440764": 4, "n01443537": 1, "n01484850": 5, "n01491361": 2, "n01494475": 3}
# Non-leaf synsets (ids after the leaves, as in the real meta.mat), wnids sorting before the leaves.
NON_LEAVES = [(6, "n00001740", "entity", [7]), (7, "n00001930", "physical entity", [1, 2, 3, 4, 5])]
TRAIN_ORDER = ["n01491361", "n01440764", "n01494475", "n01484850", "n01443537"]  # as in the outer tar
PER_CLASS = 3
N_VAL = 10
IMAGE_SIZES = ((48, 36), (36, 48), (40, 40), (52, 39))

assert sorted(TRAIN_ORDER) == WNIDS and TRAIN_ORDER != WNIDS
assert all(ILSVRC_ID[w] - 1 != i for i, w in enumerate(WNIDS))


def _tar_bytes(members, mode="w", dirs=()) -> bytes:
    """An in-memory tar of (name, bytes) members, in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _meta_mat(leaves=ILSVRC_ID) -> bytes:
    """meta.mat as the real devkit's: a (N, 1) MATLAB struct array ``synsets`` (doubles, char
    arrays, an empty or row vector of children ids), leaves first in ILSVRC2012_ID order."""
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children",
              "wordnet_height", "num_train_images"]
    rows = [(ilsvrc_id, wnid, WORDS[wnid], f"gloss of {wnid}", [], 0, PER_CLASS)
            for wnid, ilsvrc_id in sorted(leaves.items(), key=lambda kv: kv[1])]
    rows += [(ilsvrc_id, wnid, words, f"gloss of {words}", children, 2 - k, PER_CLASS * len(WNIDS))
             for k, (ilsvrc_id, wnid, words, children) in enumerate(NON_LEAVES)]
    synsets = np.zeros((len(rows), 1), np.dtype([(f, object) for f in fields]))
    for r, (ilsvrc_id, wnid, words, gloss, children, height, n_train) in enumerate(rows):
        rec = synsets[r, 0]
        rec["ILSVRC2012_ID"] = np.array([[ilsvrc_id]], np.float64)
        rec["WNID"] = wnid
        rec["words"] = words
        rec["gloss"] = gloss
        rec["num_children"] = np.array([[len(children)]], np.float64)
        rec["children"] = np.array(children, np.float64).reshape(1, -1)
        rec["wordnet_height"] = np.array([[height]], np.float64)
        rec["num_train_images"] = np.array([[n_train]], np.float64)
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"synsets": synsets})
    return buf.getvalue()


def _devkit(truth_ids) -> bytes:
    top = "ILSVRC2012_devkit_t12"
    truth = "".join(f"{i}\n" for i in truth_ids).encode()
    return _tar_bytes([(f"{top}/COPYING", b"devkit\n"),
                       (f"{top}/data/meta.mat", _meta_mat()),
                       (f"{top}/data/ILSVRC2012_validation_ground_truth.txt", truth)],
                      mode="w:gz", dirs=(f"{top}/", f"{top}/data/"))


def _loc_csv(val_wnid: dict[int, str], rng) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["ImageId", "PredictionString"])
    for n in rng.permutation(sorted(val_wnid)).tolist():  # rows in no particular order, as the real one
        wnid = val_wnid[n]
        boxes = " ".join(f"{wnid} {x} {x + 7} {x + 20} {x + 30}" for x in (3, 11))
        w.writerow([f"ILSVRC2012_val_{n:08d}", boxes])
    return buf.getvalue().encode()


def _write(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def _tree(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file below root (directories as '/'-suffixed keys)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel + "/" if p.is_dir() else rel] = "" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """The fake archives' bytes, the JPEGs inside them, and several SRC directories made of them."""
    rng = np.random.default_rng(2012)
    train_jpegs = {}  # (wnid, file name) -> JPEG bytes
    inner = {}
    for label, wnid in enumerate(WNIDS):
        members = []
        for n in range(PER_CLASS):
            w, h = IMAGE_SIZES[rng.integers(len(IMAGE_SIZES))]
            data = synthetic.jpeg_bytes(synthetic.photo(rng, w, h, label, len(WNIDS)))
            name = f"{wnid}_{1000 + 37 * n}.JPEG"
            train_jpegs[wnid, name] = data
            members.append((name, data))
        inner[wnid] = _tar_bytes(members[::-1])
    train_tar = _tar_bytes([(f"{wnid}.tar", inner[wnid]) for wnid in TRAIN_ORDER])

    val_wnid = {n: WNIDS[(3 * n + 1) % len(WNIDS)] for n in range(1, N_VAL + 1)}  # every class, unsorted
    val_jpegs = {}
    for n, wnid in val_wnid.items():
        w, h = IMAGE_SIZES[rng.integers(len(IMAGE_SIZES))]
        val_jpegs[f"ILSVRC2012_val_{n:08d}.JPEG"] = synthetic.jpeg_bytes(
            synthetic.photo(rng, w, h, WNIDS.index(wnid), len(WNIDS)))
    val_order = [sorted(val_jpegs)[i] for i in rng.permutation(N_VAL)]
    val_tar = _tar_bytes([(name, val_jpegs[name]) for name in val_order])

    truth = [ILSVRC_ID[val_wnid[n]] for n in range(1, N_VAL + 1)]
    bad_truth = list(truth)
    bad_truth[3] = NON_LEAVES[0][0]  # line 4 names a non-leaf synset
    archives = {TRAIN_TAR: train_tar, VAL_TAR: val_tar, DEVKIT: _devkit(truth)}

    base = tmp_path_factory.mktemp("ilsvrc")
    srcs = {
        "devkit": _write(base / "devkit", archives),
        "csv": _write(base / "csv", {TRAIN_TAR: train_tar, VAL_TAR: val_tar, LOC_CSV: _loc_csv(val_wnid, rng)}),
        "train_only": _write(base / "train_only", {TRAIN_TAR: train_tar}),
        "no_labels": _write(base / "no_labels", {TRAIN_TAR: train_tar, VAL_TAR: val_tar}),
        "bad_truth": _write(base / "bad_truth", {TRAIN_TAR: train_tar, VAL_TAR: val_tar,
                                                 DEVKIT: _devkit(bad_truth)}),
        "val_devkit": _write(base / "val_devkit", {VAL_TAR: val_tar, DEVKIT: archives[DEVKIT]}),
    }
    return SimpleNamespace(base=base, srcs=srcs, archives=archives, train_jpegs=train_jpegs,
                           val_jpegs=val_jpegs, val_wnid=val_wnid)


@pytest.fixture(scope="module")
def converted(fake):
    """{src name: (src tree before conversion, OUT)} for the SRCs that convert."""
    out = {}
    for name in ("devkit", "csv", "train_only"):
        before = _tree(fake.srcs[name])
        dest = fake.base / f"out_{name}"
        convert(fake.srcs[name], dest, size=SIZE, shard_size=SHARD, workers=1, progress=False)
        out[name] = (before, dest)
    return out


def _check_train(ds, fake):
    train = ds["train"]
    assert len(train) == len(fake.train_jpegs) == len(WNIDS) * PER_CLASS
    seen = set()
    for i in range(len(train)):
        source = train.source(i)
        outer, inner, file = source.split("/")
        assert outer == TRAIN_TAR and inner.endswith(".tar"), source
        wnid = inner[:-len(".tar")]
        assert file.startswith(wnid + "_"), source
        image, label = train[i]
        assert label == WNIDS.index(wnid), (source, label)
        assert int(train.labels[i]) == label
        expected = to_rgb_square(fake.train_jpegs[wnid, file], SIZE)
        np.testing.assert_array_equal(image, expected, err_msg=source)
        seen.add((wnid, file))
    assert seen == set(fake.train_jpegs)  # each input exactly once
    # Seeded random order: the first shard is not a single class.
    assert len(set(train.labels[:SHARD].tolist())) > 1


def _check_val(ds, fake):
    val = ds["val"]
    assert len(val) == N_VAL
    for i in range(N_VAL):
        n = i + 1  # val keeps the sorted name order, whatever the order inside the tar
        name = f"ILSVRC2012_val_{n:08d}.JPEG"
        assert val.source(i) == f"{VAL_TAR}/{name}"
        image, label = val[i]
        assert label == WNIDS.index(fake.val_wnid[n]), (name, label)
        np.testing.assert_array_equal(image, to_rgb_square(fake.val_jpegs[name], SIZE), err_msg=name)


def test_meta_mat_reads_like_the_real_devkit(fake):
    """The fake meta.mat has the real one's shape: an (N, 1) struct array read back through
    loadmat(squeeze_me=True) as records with scalar ids and str wnids."""
    raw = scipy.io.loadmat(io.BytesIO(_meta_mat()))
    assert raw["synsets"].shape == (len(WNIDS) + len(NON_LEAVES), 1)
    assert raw["synsets"].dtype.names[:3] == ("ILSVRC2012_ID", "WNID", "words")
    from pipeline.prepare.sources.ilsvrc import read_devkit
    synsets, val_ids = read_devkit(fake.srcs["devkit"] / DEVKIT)
    assert synsets == {ILSVRC_ID[w]: (w, WORDS[w]) for w in WNIDS}  # leaves only
    assert val_ids == [ILSVRC_ID[fake.val_wnid[n]] for n in range(1, N_VAL + 1)]


def test_train_classes_labels_and_pixels(converted, fake):
    before, out = converted["devkit"]
    ds = pipeline.open_dataset(out, verify=True)
    assert ds.classes == WNIDS
    assert ds.class_names == [WORDS[w] for w in WNIDS]
    assert ds.manifest["layout"] == "ilsvrc2012-tar"
    _check_train(ds, fake)


def test_classes_are_the_devkit_leaves_without_train(fake):
    """Without the train tar the classes come from meta.mat: the leaves only, sorted."""
    layout = detect(fake.srcs["val_devkit"])
    assert layout.classes == WNIDS
    assert layout.class_names == [WORDS[w] for w in WNIDS]
    assert list(layout.splits) == ["val"]
    assert [it.label for it in layout.splits["val"]] == \
        [WNIDS.index(fake.val_wnid[n]) for n in range(1, N_VAL + 1)]
    with pytest.raises(OutputError, match="no train split"):
        convert(fake.srcs["val_devkit"], fake.base / "out_val_devkit", size=SIZE, workers=1,
                progress=False)


def test_val_labels_follow_devkit_ids(converted, fake):
    _, out = converted["devkit"]
    ds = pipeline.open_dataset(out)
    _check_val(ds, fake)
    # The naive reading (label = ILSVRC2012_ID - 1) would disagree on every image.
    naive = [ILSVRC_ID[fake.val_wnid[n]] - 1 for n in range(1, N_VAL + 1)]
    assert all(a != b for a, b in zip(ds["val"].labels.tolist(), naive))


def test_val_labels_from_loc_csv(converted, fake):
    _, out_devkit = converted["devkit"]
    _, out = converted["csv"]
    ds = pipeline.open_dataset(out, verify=True)
    assert ds.classes == WNIDS
    assert [c["name"] for c in ds.manifest["classes"]] == [None] * len(WNIDS)
    assert ds.class_names == WNIDS
    _check_train(ds, fake)
    _check_val(ds, fake)
    ref = pipeline.open_dataset(out_devkit)
    np.testing.assert_array_equal(ds["val"].labels, ref["val"].labels)
    np.testing.assert_array_equal(ds["train"].labels, ref["train"].labels)


@pytest.mark.parametrize("name", ["devkit", "csv", "train_only"])
def test_nothing_extracted(converted, fake, name):
    before, out = converted[name]
    assert _tree(fake.srcs[name]) == before  # SRC untouched: only the archives written there
    assert sorted(p.name for p in fake.srcs[name].iterdir()) == sorted(
        k for k in before if not k.endswith("/"))
    splits = ["train"] if name == "train_only" else ["train", "val"]
    top = sorted(p.name for p in out.iterdir())
    assert top == sorted(["manifest.json", "stats.npz", "skipped.json", *splits])
    for split in splits:
        files = list((out / split).iterdir())
        assert files and all(p.is_file() and p.suffix == ".shard" for p in files), files
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        ["manifest.json", "stats.npz", "skipped.json",
         *(f"{s}/{p.name}" for s in splits for p in (out / s).iterdir())])
    assert json.loads((out / "skipped.json").read_text()) == []


def test_val_without_labels_is_a_layout_error(fake, tmp_path):
    with pytest.raises(LayoutError) as e:
        convert(fake.srcs["no_labels"], tmp_path / "out", size=SIZE, workers=1, progress=False)
    msg = str(e.value)
    assert DEVKIT in msg and LOC_CSV in msg and VAL_TAR in msg, msg
    assert not (tmp_path / "out").exists()


def test_ground_truth_naming_a_non_leaf_is_a_layout_error(fake, tmp_path):
    with pytest.raises(LayoutError) as e:
        convert(fake.srcs["bad_truth"], tmp_path / "out", size=SIZE, workers=1, progress=False)
    msg = str(e.value)
    assert "line 4" in msg and str(NON_LEAVES[0][0]) in msg, msg
    assert not (tmp_path / "out").exists()


def test_train_only(converted, fake):
    _, out = converted["train_only"]
    ds = pipeline.open_dataset(out, verify=True)
    assert list(ds.splits) == ["train"] and "val" not in ds
    assert ds.classes == WNIDS
    assert ds.class_names == WNIDS  # no devkit: no names
    _check_train(ds, fake)


@pytest.mark.parametrize("with_devkit", [False, True])
def test_train_tar_without_class_tars_is_a_layout_error(fake, tmp_path, with_devkit):
    """A train tar holding no <wnid>.tar (only directories) is refused before OUT is touched, not
    turned into an empty dataset or a KeyError on the devkit's classes."""
    files = {TRAIN_TAR: _tar_bytes([], dirs=("train/",))}
    if with_devkit:
        files[DEVKIT] = fake.archives[DEVKIT]
    src = _write(tmp_path / "src", files)
    with pytest.raises(LayoutError, match="no per-class tars"):
        convert(src, tmp_path / "out", size=SIZE, workers=1, progress=False)
    assert not (tmp_path / "out").exists()


# -- Kaggle's ILSVRC copy and flat val folders (pipeline/prepare/sources/folders.py) -------------

def _synset_mapping() -> bytes:
    """LOC_synset_mapping.txt as Kaggle's: "<wnid> <words>" per line, in ILSVRC2012_ID order."""
    return "".join(f"{w} {WORDS[w]}\n" for w in sorted(WNIDS, key=ILSVRC_ID.get)).encode()


def _kaggle(root: Path, fake, csv_rows: bool = True) -> Path:
    """Kaggle's tree: ILSVRC/Data/CLS-LOC/{train/<wnid>/, flat val/, unlabelled test/} and the
    csv + mapping files beside ILSVRC/."""
    cls_loc = root / "ILSVRC" / "Data" / "CLS-LOC"
    for (wnid, name), data in fake.train_jpegs.items():
        (cls_loc / "train" / wnid).mkdir(parents=True, exist_ok=True)
        (cls_loc / "train" / wnid / name).write_bytes(data)
    (cls_loc / "val").mkdir()
    for name, data in fake.val_jpegs.items():
        (cls_loc / "val" / name).write_bytes(data)
    (cls_loc / "test").mkdir()
    (cls_loc / "test" / "ILSVRC2012_test_00000001.JPEG").write_bytes(next(iter(fake.val_jpegs.values())))
    (root / "ILSVRC" / "Annotations").mkdir()
    if csv_rows:
        (root / LOC_CSV).write_bytes(_loc_csv(fake.val_wnid, np.random.default_rng(5)))
    (root / "LOC_synset_mapping.txt").write_bytes(_synset_mapping())
    return root


def _check_folder_dataset(ds, fake, prefix: str):
    """Labels from the folder (train) and the csv/devkit (val), pixels from the files."""
    assert ds.classes == WNIDS
    train, val = ds["train"], ds["val"]
    assert len(train) == len(fake.train_jpegs) and len(val) == N_VAL
    for i in range(len(train)):
        source = train.source(i)
        wnid, name = source.removeprefix(prefix).split("/")[1:]
        image, label = train[i]
        assert label == WNIDS.index(wnid), source
        np.testing.assert_array_equal(image, to_rgb_square(fake.train_jpegs[wnid, name], SIZE))
    for i in range(N_VAL):
        name = f"ILSVRC2012_val_{i + 1:08d}.JPEG"
        assert val.source(i) == f"{prefix}val/{name}"
        image, label = val[i]
        assert label == WNIDS.index(fake.val_wnid[i + 1]), name
        np.testing.assert_array_equal(image, to_rgb_square(fake.val_jpegs[name], SIZE))


def test_kaggle_layout_from_its_root(fake, tmp_path):
    src = _kaggle(tmp_path / "imagenet-object-localization-challenge", fake)
    convert(src, tmp_path / "out", size=SIZE, shard_size=SHARD, workers=1, progress=False)
    ds = pipeline.open_dataset(tmp_path / "out", verify=True)
    assert ds.manifest["layout"] == "kaggle-ilsvrc"
    assert ds.class_names == [WORDS[w] for w in WNIDS]  # from LOC_synset_mapping.txt
    _check_folder_dataset(ds, fake, "ILSVRC/Data/CLS-LOC/")
    assert json.loads((tmp_path / "out" / "skipped.json").read_text()) == []  # test/ is not a split


def test_kaggle_layout_from_cls_loc(fake, tmp_path):
    """SRC = CLS-LOC/: the csv and the mapping are found two levels above it."""
    root = _kaggle(tmp_path / "kaggle", fake)
    convert(root / "ILSVRC" / "Data" / "CLS-LOC", tmp_path / "out", size=SIZE, shard_size=SHARD,
            workers=1, progress=False)
    ds = pipeline.open_dataset(tmp_path / "out")
    assert ds.class_names == [WORDS[w] for w in WNIDS]
    _check_folder_dataset(ds, fake, "")


def test_flat_val_labelled_by_the_devkit(fake, tmp_path):
    """ImageNet folders with a flat val/ and the devkit beside them (its ids, not sorted order)."""
    src = _kaggle(tmp_path / "k", fake, csv_rows=False) / "ILSVRC" / "Data" / "CLS-LOC"
    plain = tmp_path / "plain"
    src.rename(plain)
    (plain / DEVKIT).write_bytes(fake.archives[DEVKIT])
    convert(plain, tmp_path / "out", size=SIZE, shard_size=SHARD, workers=1, progress=False)
    ds = pipeline.open_dataset(tmp_path / "out")
    assert ds.manifest["layout"] == "folders"
    assert ds.class_names == [WORDS[w] for w in WNIDS]  # from the devkit
    _check_folder_dataset(ds, fake, "")


def test_flat_val_without_labels_is_an_error_not_an_empty_split(fake, tmp_path):
    src = _kaggle(tmp_path / "k", fake, csv_rows=False)
    with pytest.raises(LayoutError, match=f"{N_VAL} files but no class folders.*{LOC_CSV}"):
        convert(src, tmp_path / "out", size=SIZE, workers=1, progress=False)
    assert not (tmp_path / "out").exists()


def test_flat_val_image_missing_from_the_csv_is_named(fake, tmp_path):
    src = _kaggle(tmp_path / "k", fake)
    rows = (src / LOC_CSV).read_text().splitlines()
    (src / LOC_CSV).write_text("\n".join(r for r in rows if "ILSVRC2012_val_00000007" not in r) + "\n")
    with pytest.raises(LayoutError, match="1 of 10 images have no label.*ILSVRC2012_val_00000007"):
        convert(src, tmp_path / "out", size=SIZE, workers=1, progress=False)
