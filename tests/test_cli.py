"""The command-line edge (pipeline/cli.py) of every command: the whole command line is checked before
any work, unknown flags are named with the closest valid one (exit 2), paths stay paths, --help
lists every option, and only user-facing errors become one line (once under torchrun). Also what a
user sees of the trainer (config parsing, log progress, curves) and tools/evaluate.py."""
from __future__ import annotations

import inspect
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import UsageError
from pipeline import cli
from pipeline.cli import Option, parse_args, run_cli
from tools.synthetic import jpeg_bytes

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def thousand(tmp_path_factory) -> Path:
    """A source of 1,000 small JPEGs (10 classes): converting it takes far longer than a second."""
    root = tmp_path_factory.mktemp("thousand")
    data = jpeg_bytes(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    for k in range(1000):
        path = root / "train" / f"class{k % 10}" / f"{k:04d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


# -- a typo costs nothing -----------------------------------------------------------------------

def test_typo_flag_touches_nothing_and_exits_2_at_once(thousand, tmp_path, capsys):
    from tools.prepare_imagenet import main

    out = tmp_path / "out"
    t = time.perf_counter()
    with pytest.raises(SystemExit) as e:
        run_cli(main, argv=[str(thousand), str(out), "--sise=32"], prog="prepare_imagenet.py")
    elapsed = time.perf_counter() - t
    assert e.value.code == 2 and elapsed < 1.0, elapsed
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown option --sise: did you mean --size?" in err, err
    assert not out.exists()


def test_typo_flag_in_a_real_process(thousand, tmp_path):
    res = run("tools/prepare_imagenet.py", thousand, tmp_path / "out", "--sise=32")
    assert res.returncode == 2 and "did you mean --size?" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,match", [
    (["--seed=abc"], "--seed expects an int, got 'abc'"),
    (["--size"], "--size needs a value, e.g. --size=256"),
    (["--size", "--seed=1"], "--size needs a value"),
    (["--workers=two"], "--workers expects an int or None, got 'two'"),
    (["--seed=1", "--seed=2"], "--seed is given twice"),
    (["extra"], "unexpected argument 'extra'"),
])
def test_bad_command_lines_name_the_flag(thousand, tmp_path, args, match):
    res = run("tools/prepare_imagenet.py", thousand, tmp_path / "out", *args)
    assert res.returncode == 2 and match in res.stderr, res.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,match", [
    (["--seed=-1"], "--seed must be a non-negative integer, got -1"),
    (["--workers=0"], "--workers must be a positive integer"),
    (["--encoding=png"], "--encoding must be one of"),
])
def test_bad_values_name_the_flag_before_out_is_claimed(thousand, tmp_path, args, match):
    res = run("tools/prepare_imagenet.py", thousand, tmp_path / "out", *args)
    assert res.returncode == 1 and match in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "out").exists()


def test_missing_argument(tmp_path):
    res = run("tools/prepare_imagenet.py", tmp_path)
    assert res.returncode == 2 and "missing OUT" in res.stderr


@pytest.mark.parametrize("out_args", [["64"], ["--out=2024"]])
def test_paths_are_paths(tree, tmp_path, out_args):
    res = run("tools/prepare_imagenet.py", tree, *out_args, "--size=16", "--workers=1", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    name = out_args[0].removeprefix("--out=")
    assert (tmp_path / name / "manifest.json").exists()
    assert res.stdout.strip() == name


# -- the parser ---------------------------------------------------------------------------------

OPTIONS = [Option("src", str, required=True), Option("size", int, 256), Option("verify", bool, False),
           Option("workers", int, None, optional=True), Option("lr", float, 0.01),
           Option("mean", str, "pixel", choices=("pixel", "channel", "none"))]


@pytest.mark.parametrize("argv,expected", [
    (["64"], {"src": "64"}),
    (["--src=2024"], {"src": "2024"}),
    (["a", "--size", "32"], {"src": "a", "size": 32}),
    (["a", "--size=-3"], {"src": "a", "size": -3}),
    (["a", "--verify"], {"src": "a", "verify": True}),
    (["a", "--noverify"], {"src": "a", "verify": False}),
    (["a", "--verify=false"], {"src": "a", "verify": False}),
    (["a", "--workers=None"], {"src": "a", "workers": None}),
    (["a", "--lr=1e-3"], {"src": "a", "lr": 0.001}),
    (["--shard-size-typo=1", "a"], None),
])
def test_parse_args(argv, expected):
    if expected is None:
        with pytest.raises(cli.CommandLineError, match="unknown option --shard_size_typo"):
            parse_args(OPTIONS, argv)
    else:
        assert parse_args(OPTIONS, argv) == expected


@pytest.mark.parametrize("argv,match", [
    (["a", "--mean=pixels"], "--mean must be one of pixel|channel|none, got 'pixels'"),
    (["a", "--verify=maybe"], "--verify expects a bool"),
    (["a", "--lr=fast"], "--lr expects a float"),
    (["a", "--size=1.5"], "--size expects an int"),
    (["a", "--workres=2"], "did you mean --workers?"),
    (["a", "--zzz=2"], "valid options: --src, --size"),
])
def test_parse_errors(argv, match):
    with pytest.raises(cli.CommandLineError, match=match.replace("|", "\\|").replace("?", "\\?")):
        parse_args(OPTIONS, argv)


@pytest.mark.parametrize("text,expected", [("29,59", [29, 59]), ("[29, 59, 89]", [29, 59, 89]),
                                           ("7", [7]), ("[]", [])])
def test_list_of_int_options(text, expected):
    """--keep_epochs: a comma-separated list, with or without brackets, handed on as a list."""
    opt = Option("keep_epochs", list, [], meaning="epochs")
    assert cli.parse_value(opt, text) == expected
    with pytest.raises(cli.CommandLineError, match="--keep_epochs expects a list of int"):
        cli.parse_value(opt, "29,last")


def test_trainer_list_key_reaches_the_config():
    from trainer.config import make_config

    assert make_config(None, data="d", keep_epochs=[29, 59]).keep_epochs == [29, 59]
    assert make_config(None, data="d", keep_epochs=(3, 5)).keep_epochs == [3, 5]  # fire's tuple


# -- errors: only the user's become one line -----------------------------------------------------

def test_user_errors_are_one_line_bugs_keep_their_traceback(capsys):
    def user(x: str):
        """x: anything"""
        raise UsageError(f"--x is wrong: {x}")

    def bug(x: str):
        """x: anything"""
        raise ValueError("an internal invariant broke")

    with pytest.raises(SystemExit) as e:
        run_cli(user, argv=["7"], prog="t")
    assert e.value.code == 1 and capsys.readouterr().err == "error: --x is wrong: 7\n"
    with pytest.raises(ValueError, match="internal invariant"):
        run_cli(bug, argv=["7"], prog="t")
    with pytest.raises(SystemExit):
        run_cli(lambda: open("/nonexistent/file"), argv=[], prog="t")
    assert "error: [Errno 2] No such file or directory: '/nonexistent/file'" in capsys.readouterr().err


def test_error_printed_by_rank_0_only(monkeypatch, capsys, tmp_path):
    def fail():
        raise UsageError("bad")

    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE", raising=False)
    for rank, expected in (("1", ""), ("0", "error: bad\n")):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit):
            run_cli(fail, argv=[], prog="t")
        assert capsys.readouterr().err == expected
    # Under torchrun: into the rank's error file, which torchrun prints last (another rank waits
    # first, so that when rank 0 fails too, torchrun stops it before it repeats the message).
    monkeypatch.setattr(cli, "OTHER_RANK_DELAY_S", 0.0)
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / f"error{rank}.json"))
        with pytest.raises(SystemExit):
            run_cli(fail, argv=[], prog="t")
        assert capsys.readouterr().err == ""
        assert json.loads((tmp_path / f"error{rank}.json").read_text())["message"] == "error: bad"


def test_config_error_under_torchrun_is_printed_once_and_last(tmp_path):
    """Two ranks fail alike: the message appears once, on torchrun's last line."""
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(ROOT / "trainer" / "main.py"), f"--data={tmp_path}", "--mp=3",
                          f"--out={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode != 0
    text = res.stdout + res.stderr
    assert text.count("mp must be 1 or 2, got 3") == 1, text
    last = [line for line in res.stderr.splitlines() if line.strip() and set(line.strip()) != {"="}][-1]
    assert last.strip().endswith("error: mp must be 1 or 2, got 3"), res.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_inspect_missing_split_and_wrong_manifest_shape(dataset, tmp_path):
    res = run("tools/inspect_dataset.py", dataset, "--split=test", "--grid", tmp_path / "g.png")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "--split" in res.stderr and "no split 'test'" in res.stderr and res.stdout == ""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text(json.dumps({"version": 1, "size": 32, "splits": []}))
    res = run("tools/inspect_dataset.py", bad)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "manifest.json: not the manifest this tool writes" in res.stderr
    (bad / "manifest.json").write_text("[1, 2]")
    res = run("tools/inspect_dataset.py", bad)
    assert res.returncode == 1 and "valid JSON but not a manifest" in res.stderr


def test_converter_out_is_a_file(tree, tmp_path):
    (tmp_path / "out").write_text("precious")
    res = run("tools/prepare_imagenet.py", tree, tmp_path / "out")
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and "exists and is a file" in res.stderr
    assert (tmp_path / "out").read_text() == "precious"


def test_ffcv_export_does_not_overwrite(dataset, tmp_path):
    (tmp_path / "x.beton").write_text("precious")
    res = run("tools/export_ffcv.py", dataset, tmp_path / "x.beton")
    assert res.returncode == 1 and "exists; pass --overwrite" in res.stderr, res.stderr
    assert (tmp_path / "x.beton").read_text() == "precious"
    res = run("tools/export_ffcv.py", dataset, tmp_path / "y.beton", "--workers=0")
    assert res.returncode == 1 and "--workers must be a positive integer" in res.stderr


# -- --help lists every option with its type, default and meaning ---------------------------------

def _commands():
    from tools import benchmark, demo, evaluate, export_ffcv, inspect_dataset, prepare_imagenet
    from tools.bench.loader import loader
    from tools.bench.model import model, train, train_options
    from trainer.config import cli_options
    from trainer.main import main as trainer_main

    return [("tools/prepare_imagenet.py", [], prepare_imagenet.main, []),
            ("tools/inspect_dataset.py", [], inspect_dataset.main, []),
            ("tools/export_ffcv.py", [], export_ffcv.main, []),
            ("tools/demo.py", [], demo.main, []),
            ("tools/benchmark.py", ["prepare"], benchmark.prepare, []),
            ("tools/benchmark.py", ["loader"], loader, []),
            ("tools/benchmark.py", ["model"], model, []),
            ("tools/benchmark.py", ["train"], train, train_options()),
            ("trainer/main.py", [], trainer_main, cli_options()),
            ("tools/evaluate.py", [], evaluate.main, [])]


@pytest.mark.parametrize("index", range(10))
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_every_option(index, flag):
    script, sub, fn, extra = _commands()[index]
    res = run(script, *sub, flag)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    text = res.stdout
    options = cli.options_of(fn) + extra
    assert options
    for opt in options:
        assert opt.meaning, f"{script} {sub}: {opt.name} has no meaning line in its docstring"
        line = f"  {opt.flag}  {opt.type_name()}" + ("" if opt.required else f" (default: {opt.default!r})")
        assert line in text, (opt.name, text)
        assert opt.meaning in " ".join(text.split()), (opt.name, text)
    params = [p for p in inspect.signature(fn).parameters.values() if p.kind is not p.VAR_KEYWORD]
    assert {p.name for p in params} <= {o.name for o in options}


def test_benchmark_lists_its_commands():
    res = run("tools/benchmark.py", "--help")
    assert res.returncode == 0
    for sub in ("prepare", "loader", "model", "train"):
        assert f"  {sub}  " in res.stdout
    res = run("tools/benchmark.py", "trian")
    assert res.returncode == 2 and "did you mean train?" in res.stderr


def test_benchmark_train_help_lists_trainer_keys_with_enum_values():
    res = run("tools/benchmark.py", "train", "--help")
    assert "  --precision  fp32|bf16|fp16 (default: 'fp32')" in res.stdout
    assert "  --lr_schedule  plateau|step|cosine" in res.stdout


# -- the trainer's config and curves (trainer/config.py, trainer/metrics.py) ----------------------

def test_yaml_exponent_without_a_dot_is_a_float(tmp_path):
    from trainer.config import make_config

    (tmp_path / "c.yaml").write_text("lr: 1e-3\nweight_decay: 5E-4\nmomentum: .9\n")
    cfg = make_config(str(tmp_path / "c.yaml"), data="d")
    assert (cfg.lr, cfg.weight_decay, cfg.momentum) == (0.001, 0.0005, 0.9)
    (tmp_path / "c.yaml").write_text("lr: fast\n")
    with pytest.raises(ValueError, match="lr must be float, got 'fast'"):
        make_config(str(tmp_path / "c.yaml"), data="d")


def test_unknown_key_says_where_it_came_from(tmp_path):
    from trainer.config import make_config

    (tmp_path / "c.yaml").write_text("lr: 0.1\n")
    with pytest.raises(ValueError, match=r"\['lr_schedul'\] on the command line; did you mean 'lr_schedule'"):
        make_config(str(tmp_path / "c.yaml"), data="d", lr_schedul="step")
    (tmp_path / "c.yaml").write_text("learning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"\['learning_rate'\] in .*c.yaml"):
        make_config(str(tmp_path / "c.yaml"), data="d", lr=0.1)


def test_every_config_key_has_a_group_and_a_meaning():
    from dataclasses import fields

    from trainer.config import CHOICES, HELP, Config, cli_options

    grouped = [k for keys in HELP.values() for k in keys]
    assert sorted(grouped) == sorted(f.name for f in fields(Config)) and len(set(grouped)) == len(grouped)
    assert list(HELP) == ["data", "model", "optimisation", "schedule", "precision", "checkpoints", "logging"]
    by_name = {o.name: o for o in cli_options()}
    assert all(by_name[k].choices == v for k, v in CHOICES.items())


def test_curves_have_labelled_axes_and_whole_epoch_ticks():
    from trainer.metrics import figure

    rows = [{"kind": "step", "step": s, "epoch": s // 10, "loss": 5 - s / 20} for s in range(1, 31)]
    rows += [{"kind": "epoch", "epoch": e, "val_loss": 4 - e, "val_top1": 0.1 * e, "val_top5": 0.2 * e,
              "val_top1_10crop": None} for e in range(3)]
    fig = figure(rows)
    a, b = fig.axes
    assert (a.get_xlabel(), b.get_xlabel()) == ("step", "epoch")
    assert a.get_ylabel() and b.get_ylabel()
    fig.canvas.draw()
    for axes in (a, b):  # steps and epochs are whole
        ticks = [t for t in axes.get_xticks() if axes.get_xlim()[0] <= t <= axes.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    one = figure(rows[3:4]).axes[0]  # a single logged step is still visible
    assert one.lines[0].get_marker() == "o"
    single = figure(rows[:10] + rows[30:31])  # one epoch (the demo's run): still whole ticks only
    single.canvas.draw()
    for axes in single.axes:
        ticks = [t for t in axes.get_xticks() if axes.get_xlim()[0] <= t <= axes.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_trainer_help_groups_every_config_key():
    from dataclasses import fields

    from trainer.config import HELP, Config

    res = run("trainer/main.py", "--help")
    assert res.returncode == 0 and "unknown config keys" not in res.stdout + res.stderr
    headings = [line[:-1] for line in res.stdout.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert headings == ["options", *HELP], headings
    for f in fields(Config):
        assert f"  --{f.name}  " in res.stdout, f.name
    assert "  --mean  pixel|channel|none (default: 'pixel')" in res.stdout
    assert "  --device  auto|cpu|cuda (default: 'auto')" in res.stdout


def test_progress_text_and_eta():
    from trainer.metrics import duration, progress

    assert [duration(s) for s in (0, 59.4, 61, 3600 * 3 + 7 * 60 + 5)] == ["0s", "59s", "1m01s", "3h07m"]
    # 0.5 s a step: 7 steps to the epoch's end (3.5 s), 100 - 23 = 77 to the run's (38.5 s)
    assert progress(3, 10, 23, 100, 0.5) == "step 3/10 (global 23/100) ETA epoch 4s, run 38s"


def test_evaluation_progress_lines(capsys):
    from trainer.metrics import with_progress

    assert list(with_progress(list(range(25)), True, "eval one-crop", lines=5)) == list(range(25))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(",")[0] for line in lines] == [f"eval one-crop: batch {k}/25" for k in (5, 10, 15, 20, 25)]
    assert all("ETA" in line for line in lines)
    list(with_progress(list(range(3)), False, "eval"))
    assert capsys.readouterr().out == ""


def test_trainer_log_shows_progress_eta_and_evaluation(dataset, tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "trainer" / "main.py"),
                          f"--config={ROOT / 'configs' / 'tiny_cpu.yaml'}", f"--data={dataset}",
                          f"--out={tmp_path / 'run'}", "--batch_size=8", "--epochs=1", "--log_every=1"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    steps = len(__import__("pipeline").open_dataset(dataset)["train"]) // 8
    assert f"epoch 0 step 1/{steps} (global 1/{steps}) ETA epoch " in res.stdout, res.stdout
    assert f"epoch 0 step {steps}/{steps} (global {steps}/{steps}) ETA epoch 0s, run 0s" in res.stdout
    assert "img/s" in res.stdout and "eval one-crop: batch 1/1" in res.stdout, res.stdout


# -- tools/evaluate.py: a finished checkpoint on a dataset's val split ----------------------------

def test_evaluate_a_checkpoint_one_crop_and_ten_crop(dataset, tmp_path):
    """The run's own evaluation of epoch 0 (in metrics.jsonl) is what the command gives for the
    epoch-0 checkpoint; the one-crop figures also against a plain torch forward pass over the
    stored val images (centre crop minus the mean image's centre crop, by hand)."""
    import torch
    import torch.nn.functional as F

    import pipeline
    from trainer.models import build_model

    run_dir = tmp_path / "run"
    res = subprocess.run([sys.executable, str(ROOT / "trainer" / "main.py"),
                          f"--config={ROOT / 'configs' / 'tiny_cpu.yaml'}", f"--data={dataset}",
                          f"--out={run_dir}", "--batch_size=8", "--epochs=1", "--ten_crop_eval=True"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = run_dir / "checkpoints" / "epoch000.pt"
    res = run("tools/evaluate.py", ckpt, "--batch_size=3", f"--json={tmp_path / 'eval.json'}", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads((tmp_path / "eval.json").read_text())
    [row] = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "epoch"]
    assert got["images"] == 8 and "one-crop  val (8 images)" in res.stdout and "ten-crop" in res.stdout
    assert got["one_crop"]["top1"] == row["val_top1"] and got["one_crop"]["top5"] == row["val_top5"]
    assert got["ten_crop"]["top1"] == row["val_top1_10crop"]
    np.testing.assert_allclose(got["one_crop"]["loss"], row["val_loss"], rtol=1e-5)

    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    cfg = state["config"]
    ds = pipeline.open_dataset(dataset)
    model = build_model(cfg["model"], len(ds.classes), cfg["crop"], dropout=0.0)
    model.load_state_dict(state["model"])
    model.eval()
    c, s = cfg["crop"], ds.size
    o = (s - c) // 2
    mean = ds.stats["mean_image"][o:o + c, o:o + c].astype(np.float32)
    images = np.stack([ds["val"][i][0][o:o + c, o:o + c].astype(np.float32) - mean for i in range(8)])
    labels = torch.tensor([ds["val"][i][1] for i in range(8)])
    with torch.no_grad():
        scores = model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    np.testing.assert_allclose(got["one_crop"]["loss"], F.cross_entropy(scores, labels).item(), rtol=1e-4)
    assert got["one_crop"]["top1"] == (scores.argmax(1) == labels).float().mean().item()


def test_evaluate_refuses_what_is_not_a_checkpoint(dataset, tmp_path):
    (tmp_path / "x.pt").write_text("not a checkpoint")
    res = run("tools/evaluate.py", tmp_path / "x.pt", f"--data={dataset}")
    assert res.returncode == 1 and "not a readable checkpoint" in res.stderr and "Traceback" not in res.stderr
    res = run("tools/evaluate.py", tmp_path / "nope.pt", "--one_crop=False", "--ten_crop=False")
    assert res.returncode == 1 and "nothing to evaluate" in res.stderr


def test_trainer_out_that_is_a_file(dataset, tmp_path):
    (tmp_path / "run").write_text("precious")
    res = run("trainer/main.py", f"--config={ROOT / 'configs' / 'tiny_cpu.yaml'}", f"--data={dataset}",
              f"--out={tmp_path / 'run'}")
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
    assert "exists and is a file" in res.stderr and (tmp_path / "run").read_text() == "precious"


def test_ffcv_export_overwrites_only_when_asked(dataset, tmp_path):
    pytest.importorskip("ffcv")
    from tools.export_ffcv import export_beton

    (tmp_path / "x.beton").write_text("old")
    export_beton(dataset, "val", tmp_path / "x.beton", num_workers=1, overwrite=True)
    assert (tmp_path / "x.beton").stat().st_size > 100


def test_a_crop_too_small_for_alexnet_is_a_config_error_before_any_work():
    from trainer.config import ConfigError, make_config

    # by hand: conv1 (11, stride 4, pad 2) then pool (3, 2) must leave >= 7 for pool2 to leave >= 3
    # for pool5 to leave 1: (c + 4 - 11) // 4 + 1 >= 15, so c >= 63
    assert make_config(None, data="d", model="alexnet", crop=63).crop == 63
    with pytest.raises(ConfigError, match="crop 62 px is too small for alexnet"):
        make_config(None, data="d", model="alexnet", crop=62)
