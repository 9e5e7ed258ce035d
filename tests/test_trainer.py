"""The trainer under torchrun on the CPU (gloo): layout parity, the split model against the
groups=2 module, exact resume, config errors, outputs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from helpers import MAIN, ROOT, base_args, kill_job, losses, torchrun


@pytest.mark.timeout(600)
def test_losses_agree_across_dp_mp_layouts(dataset, tmp_path):
    """dp x mp = 1x1, 1x2, 2x1, 2x2 at global batch 8, augmentation on, dropout 0: 20 steps."""
    runs = {}
    for dp, mp in ((1, 1), (1, 2), (2, 1), (2, 2)):
        out = tmp_path / f"dp{dp}mp{mp}"
        torchrun(dp * mp, *base_args(dataset, out, mp=mp))
        runs[(dp, mp)] = losses(out)
    ref = runs[(1, 1)]
    assert sorted(ref) == list(range(1, 21))
    assert len(set(np.round(list(ref.values()), 3))) > 10  # it trains: the losses move
    for layout, got in runs.items():
        np.testing.assert_allclose([got[s] for s in ref], list(ref.values()), rtol=1e-3,
                                   err_msg=f"dp x mp = {layout}")


@pytest.mark.timeout(600)
def test_the_shipped_alexnet_init_and_bias_rate_agree_across_mp(dataset, tmp_path):
    """configs/alexnet_paper.yaml's init keys (Caffe's stds, biases 0.1 at lr x2) on the two-tower
    graph: mp=2 gives mp=1's losses (dropout 0, whose masks are drawn per rank)."""
    keys = dict(init="caffe", bias_init=0.1, bias_lr_mult=2.0, max_steps=12)
    runs = {}
    for mp in (1, 2):
        torchrun(mp, *base_args(dataset, tmp_path / f"mp{mp}", mp=mp, **keys))
        runs[mp] = losses(tmp_path / f"mp{mp}")
    plain = tmp_path / "plain"
    torchrun(1, *base_args(dataset, plain, max_steps=12))
    assert sorted(runs[1]) == list(range(1, 13))
    np.testing.assert_allclose([runs[2][s] for s in runs[1]], list(runs[1].values()), rtol=1e-3)
    assert not np.allclose(list(losses(plain).values()), list(runs[1].values()), rtol=1e-3)  # the keys act


SPLIT_SCRIPT = r"""
import sys, torch, torch.distributed as dist
from trainer.models import build_model
from trainer.parallel import init_distributed
from trainer.checkpoint import full_state, load_full_state
d = init_distributed(2, "cpu")
C = int(sys.argv[1])
torch.manual_seed(0)
x = torch.randn(4, 3, 28, 28); y = torch.randint(0, C, (4,))
ref = build_model("alexnet_small", C, 28, dropout=0.0, seed=3)
split = build_model("alexnet_small", C, 28, dropout=0.0, seed=3, mp_group=d.mp_group, mp_size=2, mp_rank=d.mp_rank)
opts = [torch.optim.SGD([p for p in m.parameters()], lr=0.05, momentum=0.9, weight_decay=5e-4) for m in (ref, split)]
for it in range(2):
    outs = []
    for m, o in zip((ref, split), opts):
        o.zero_grad(); logits = m(x); torch.nn.functional.cross_entropy(logits, y).backward(); o.step()
        outs.append(logits.detach())
    assert torch.allclose(outs[0], outs[1], rtol=1e-4, atol=1e-5), (it, (outs[0] - outs[1]).abs().max())
for name, p in ref.named_parameters():
    g = dict(split.named_parameters())[name].grad
    parts = [None, None]; dist.all_gather_object(parts, g, group=d.mp_group)  # parts may differ in length
    assert torch.allclose(torch.cat(parts), p.grad, rtol=1e-4, atol=1e-6), ("grad", name)
gathered, momentum = full_state(split, opts[1], d)
for name, p in ref.named_parameters():
    assert torch.allclose(gathered[name], p.detach(), rtol=1e-5, atol=1e-7), ("weight", name)
    assert torch.allclose(momentum[name], opts[0].state[p]["momentum_buffer"], rtol=1e-4, atol=1e-6), ("momentum", name)
assert gathered["fcs.2.weight"].shape[0] == C
fresh = build_model("alexnet_small", C, 28, dropout=0.0, seed=9, mp_group=d.mp_group, mp_size=2, mp_rank=d.mp_rank)
fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.05, momentum=0.9)
load_full_state(fresh, fresh_opt, gathered, momentum, d)  # the checkpoint round trip, mp=1 form
for (name, p), q in zip(split.named_parameters(), fresh.parameters()):
    assert torch.equal(p, q) and torch.equal(opts[1].state[p]["momentum_buffer"], fresh_opt.state[q]["momentum_buffer"]), name
print("SPLIT-OK", d.rank)
dist.destroy_process_group()
"""


@pytest.mark.timeout(300)
@pytest.mark.parametrize("classes", [10, 5, 1])  # even, fc8 split 3 + 2, fc8 split 1 + 0
def test_split_model_equals_groups2_module(tmp_path, classes):
    script = tmp_path / "split.py"
    script.write_text(SPLIT_SCRIPT)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", str(script), str(classes)], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-4000:]
    assert res.stdout.count("SPLIT-OK") == 2


def test_same_seed_same_network_whatever_the_layout():
    from trainer.models import build_model

    full = build_model("alexnet", 1000, 224, seed=7)
    other = build_model("alexnet", 1000, 224, seed=8)
    assert sum(p.numel() for p in full.parameters()) == 60_965_224  # the paper's ~60 million
    halves = [build_model("alexnet", 1000, 224, seed=7, mp_size=2, mp_rank=r) for r in (0, 1)]
    for (name, p), q in zip(full.named_parameters(), other.parameters()):
        joined = torch.cat([dict(h.named_parameters())[name] for h in halves])
        assert torch.equal(joined, p), name
        if p.ndim > 1:
            assert not torch.equal(p, q)
            assert abs(p.std().item() - 0.01) < 0.002  # paper: N(0, 0.01)
    biases = {n: p for n, p in full.named_parameters() if n.endswith("bias")}
    ones = ["convs.1.bias", "convs.3.bias", "convs.4.bias", "fcs.0.bias", "fcs.1.bias"]
    for name, b in biases.items():
        assert torch.all(b == (1.0 if name in ones else 0.0)), name


def test_channels_last_reaches_every_conv_and_changes_nothing():
    """torch's LRN returns NCHW whatever its input: the towers hand the next conv what they were
    given, so a channels_last run stays channels_last from the batch to conv5, with the same
    outputs as the NCHW model. (Gradients differ by ~3 % in conv1 between torch's NCHW and NHWC
    CPU kernels, with or without the LRN fix: not compared here; the gloo test below trains.)"""
    from trainer.models import build_model
    from trainer.parallel import memory_format
    torch.manual_seed(0)
    ref = build_model("alexnet", 10, 224, dropout=0.0)
    net = build_model("alexnet", 10, 224, dropout=0.0)
    net.load_state_dict(ref.state_dict())
    net = net.to(memory_format=torch.channels_last)
    seen = []
    for conv in net.convs:
        conv.register_forward_pre_hook(lambda mod, inp: seen.append(memory_format(inp[0])))
    x = torch.randn(2, 3, 224, 224)
    a = ref(x)
    b = net(x.contiguous(memory_format=torch.channels_last))
    assert seen == [torch.channels_last] * 5
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_channels_last_towers_over_gloo_give_the_one_process_losses(dataset, tmp_path):
    """mp=2 with channels_last: the all-gathers keep NHWC (not .contiguous()) and still give mp=1's
    NCHW losses."""
    runs = {}
    for mp, cl in ((1, False), (2, True)):
        out = tmp_path / f"mp{mp}"
        torchrun(mp, *base_args(dataset, out, mp=mp, channels_last=cl, max_steps=8))
        runs[mp] = losses(out)
    np.testing.assert_allclose([runs[2][s] for s in runs[1]], list(runs[1].values()), rtol=1e-3)


def test_lrn_matches_the_paper_formula_within_a_tower():
    from trainer.models.alexnet import PAPER, AlexNet

    net = AlexNet(PAPER, 10, 224)
    x = torch.rand(2, 96, 5, 5) * 10
    got = net._lrn(x)
    ref = torch.empty_like(x)
    for t in range(2):  # b = a / (2 + 1e-4 * sum_{5 neighbours in the tower} a^2)^0.75
        a = x[:, 48 * t:48 * (t + 1)]
        for c in range(48):
            window = a[:, max(0, c - 2):min(48, c + 3)]
            ref[:, 48 * t + c] = a[:, c] / (2 + 1e-4 * (window ** 2).sum(1)) ** 0.75
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def _rows(out, kind):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def _train_losses(out) -> list:
    return [r["train_loss"] for r in _rows(out, "epoch")]


@pytest.mark.timeout(600)
def test_stopped_run_resumes_exactly(dataset, tmp_path):
    """The same command twice (first stopped at step 7 mid-epoch, then run on) equals one run."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    common = dict(mp=2, dropout=0.5, max_steps=12, eval_every=1)
    torchrun(2, *base_args(dataset, whole, **common))
    torchrun(2, *base_args(dataset, parts, **dict(common, max_steps=7)))
    torchrun(2, *base_args(dataset, parts, **common))
    a, b = losses(whole), losses(parts)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    np.testing.assert_allclose([b[s] for s in a], list(a.values()), rtol=1e-5)
    epochs = [json.loads(r) for r in (parts / "metrics.jsonl").read_text().splitlines()]
    # 24 train samples at global batch 8: 3 steps an epoch; each epoch row once despite the stop
    assert [r["epoch"] for r in epochs if r["kind"] == "epoch"] == [0, 1, 2, 3]
    # epoch 2 (steps 7-9) was cut after step 7: its train_loss still covers all three steps
    np.testing.assert_allclose(_train_losses(parts), _train_losses(whole), rtol=1e-6)
    assert (parts / "curves.png").exists() and (parts / "checkpoints" / "epoch003.pt").exists()


def test_outputs_and_metrics_rows(dataset, tmp_path):
    out = tmp_path / "run"
    torchrun(1, *base_args(dataset, out, max_steps=0, epochs=2, eval_every=1, ten_crop_eval=True,
                           log_every=2))
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["epochs"] == 2 and saved["model"] == "alexnet_small"
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    step_keys = {"kind", "step", "epoch", "loss", "lr", "img_per_s", "data_wait_frac"}
    epoch_keys = {"kind", "epoch", "train_loss", "val_loss", "val_top1", "val_top5", "val_top1_10crop",
                  "img_per_s", "data_wait_frac"}
    assert all(set(r) == step_keys for r in rows if r["kind"] == "step")
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert len(epochs) == 2 and all(set(r) == epoch_keys for r in epochs)
    assert all(0 <= r[k] <= 1 for r in epochs for k in ("val_top1", "val_top5", "val_top1_10crop"))
    assert any((out / "tb").iterdir()) and (out / "curves.png").stat().st_size > 1000
    state = torch.load(out / "checkpoints" / "latest.pt", weights_only=False)
    assert set(state) >= {"model", "momentum", "schedule", "rng", "data", "step", "config"}


# exit 2: the command line itself is wrong (pipeline/cli.py, nothing started); 1: a config that cannot work
@pytest.mark.parametrize("args,match,code", [
    (["--learning_rate=0.1"], "unknown option --learning_rate: valid options:.*--lr,", 2),
    (["--lr_schedul=step"], "unknown option --lr_schedul: did you mean --lr_schedule\\?", 2),
    (["--lr=fast"], "--lr expects a float, got 'fast'", 2),
    (["--mp=3"], "mp must be 1 or 2", 1),
    (["--model=vgg16", "--mp=2"], "cannot be split", 1),
    (["--precision=fp8"], "precision must be one of", 2),
])
def test_config_errors_are_clear(dataset, tmp_path, args, match, code):
    res = subprocess.run([sys.executable, MAIN, f"--config={ROOT / 'configs' / 'tiny_cpu.yaml'}",
                          f"--data={dataset}", f"--out={tmp_path / 'o'}", *args],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == code and "Traceback" not in res.stderr
    assert __import__("re").search(match, res.stderr), res.stderr


def test_world_not_divisible_by_mp(dataset, tmp_path):
    res = torchrun(3, *base_args(dataset, tmp_path / "o", mp=2), check=False)
    assert res.returncode != 0 and "not divisible by mp=2" in res.stderr + res.stdout


def test_resume_with_another_config_is_refused(dataset, tmp_path):
    out = tmp_path / "run"
    torchrun(1, *base_args(dataset, out, max_steps=3))
    res = torchrun(1, *base_args(dataset, out, max_steps=6, lr=0.05), check=False)
    assert res.returncode != 0 and "lr: 0.01 -> 0.05" in res.stderr + res.stdout
    torchrun(1, *base_args(dataset, out, max_steps=6))  # raising max_steps is allowed
    assert sorted(losses(out)) == list(range(1, 7))


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(600)
def test_two_launchers_c10d_rendezvous_equal_one_node(dataset, tmp_path):
    """Multi-node as documented: two torchrun launchers (one process each) meeting through c10d
    on 127.0.0.1 give the same losses as one launcher with two processes."""
    one = tmp_path / "one"
    torchrun(2, *base_args(dataset, one, mp=2, max_steps=6))
    two = tmp_path / "two"
    port = _free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
           "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=test",
           MAIN, *base_args(dataset, two, mp=2, max_steps=6)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    nodes = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    for p in nodes:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    a, b = losses(one), losses(two)
    assert sorted(b) == list(range(1, 7))
    np.testing.assert_allclose([b[s] for s in a], list(a.values()), rtol=1e-5)


@pytest.mark.timeout(600)
def test_killed_job_resumes_from_latest_checkpoint_exactly(dataset, tmp_path):
    import time

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    common = dict(mp=2, max_steps=12, ckpt_every_steps=2, dropout=0.5)
    torchrun(2, *base_args(dataset, whole, **common))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", MAIN,
           *base_args(dataset, killed, **common)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (killed / "metrics.jsonl").exists() and len(losses(killed)) >= 5:
            break
        time.sleep(0.05)
    kill_job(proc)  # the whole job, launcher and both ranks
    proc.wait()
    assert len(losses(killed)) < 12, "the kill came too late to test anything"
    torchrun(2, *base_args(dataset, killed, **common))
    a, b = losses(whole), losses(killed)
    assert sorted(b) == list(range(1, 13))
    np.testing.assert_allclose([b[s] for s in a], list(a.values()), rtol=1e-5)


def _single_process():
    from trainer.parallel import Dist
    return Dist(rank=0, local_rank=0, world=1, dp_rank=0, dp_size=1, mp_rank=0, mp_size=1,
                device=torch.device("cpu"))


def test_grad_scaler_state_round_trips_through_the_checkpoint(tmp_path):
    """fp16 cannot train on the CPU, so the scaler's state (scale after a backoff, growth tracker
    part-way) goes through the checkpoint code the trainer uses, and both scalers then agree."""
    from trainer import checkpoint as ckpt
    from trainer.models import build_model

    def scaler_steps(model, opt, scaler, grads_inf):
        for inf in grads_inf:
            opt.zero_grad()
            scaler.scale(model(torch.ones(2, 3, 32, 32)).sum()).backward()
            if inf:
                next(model.parameters()).grad[0].fill_(float("inf"))  # an overflowing fp16 step
            scaler.step(opt)
            scaler.update()

    d = _single_process()
    model = build_model("cifar_cnn", 3, 32, seed=1, dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=5)
    scaler_steps(model, opt, scaler, [True, False, False])  # backoff to 512, then 2 good steps
    assert scaler.get_scale() == 512.0 and scaler.state_dict()["_growth_tracker"] == 2
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    ckpt.save_atomic(ckpt.capture(model, opt, scaler, d, step=3, run_id="r"), ckpt_dir / "latest.pt")

    fresh = build_model("cifar_cnn", 3, 32, seed=2, dropout=0.0)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.01, momentum=0.9)
    fresh_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, growth_interval=5)
    ckpt.restore(ckpt.resume_state(ckpt_dir, d), fresh, fresh_opt, fresh_scaler, d)
    assert fresh_scaler.state_dict() == scaler.state_dict()
    for m, o, s in ((model, opt, scaler), (fresh, fresh_opt, fresh_scaler)):
        scaler_steps(m, o, s, [False, False, False])  # the 5th good step doubles the scale
    assert fresh_scaler.get_scale() == scaler.get_scale() == 1024.0
    for p, q in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(p, q)


def test_retention_keeps_the_last_the_best_and_the_asked(tmp_path):
    from trainer import checkpoint as ckpt

    for e in range(10):
        (tmp_path / f"epoch{e:03d}.pt").write_bytes(b"x")
    (tmp_path / "latest.pt").write_bytes(b"x")
    gone = ckpt.prune(tmp_path, keep_last=2, keep_epochs=[0, 5], best_epoch=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["epoch000.pt", "epoch003.pt", "epoch005.pt", "epoch008.pt", "epoch009.pt", "latest.pt"]
    assert len(gone) == 5
    ckpt.prune(tmp_path, keep_last=9, keep_epochs=[], best_epoch=None)  # more than there are
    assert len(list(tmp_path.iterdir())) == 6
    ckpt.prune(tmp_path, keep_last=0, keep_epochs=[], best_epoch=None)
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


def _launch_two_nodes(dataset, outs, port, **kw):
    """Two torchrun launchers, one process each, meeting through c10d on 127.0.0.1: two "nodes",
    each with its own run directory (node-local storage)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2",
                              "--nproc_per_node=1", "--rdzv_backend=c10d",
                              f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=local", MAIN,
                              *base_args(dataset, out, **kw)],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True) for out in outs]


def _step_losses(*outs) -> dict:
    """Step losses from every run directory that rank 0 wrote to (rank 0 may land on either
    node after a restart); a step logged in two directories must agree."""
    merged = {}
    for out in outs:
        if (out / "metrics.jsonl").exists():
            for step, loss in losses(out).items():
                assert step not in merged or abs(merged[step] - loss) <= 1e-5 * abs(loss), step
                merged[step] = loss
    return merged


@pytest.mark.timeout(900)
def test_two_nodes_with_node_local_out_killed_and_restarted_resume_exactly(dataset, tmp_path):
    """The README's two-node command with a node-local ``out`` on each node: both launchers are
    killed mid-run and started again; every rank resumes from the same checkpoint (broadcast by
    the rank that holds it) and the losses are those of an uninterrupted run."""
    import time

    common = dict(mp=2, max_steps=12, ckpt_every_steps=2, dropout=0.5)
    whole = tmp_path / "whole"
    torchrun(2, *base_args(dataset, whole, **common))
    outs = [tmp_path / "node_a", tmp_path / "node_b"]
    nodes = _launch_two_nodes(dataset, outs, _free_port(), **common)
    deadline = time.time() + 300
    while time.time() < deadline and all(p.poll() is None for p in nodes):
        if len(_step_losses(*outs)) >= 5:
            break
        time.sleep(0.05)
    for p in nodes:
        kill_job(p)  # both nodes: launchers and ranks
    for p in nodes:
        p.communicate()
    assert len(_step_losses(*outs)) < 12, "the kill came too late to test anything"
    assert all((out / "checkpoints" / "latest.pt").exists() for out in outs), "each node keeps its own"
    nodes = _launch_two_nodes(dataset, outs, _free_port(), **common)
    try:
        for p in nodes:
            _, err = p.communicate(timeout=300)  # before the fix: the ranks diverged, then hung
            assert p.returncode == 0, err[-3000:]
    finally:
        for p in nodes:
            if p.poll() is None:
                kill_job(p)
    a, b = losses(whole), _step_losses(*outs)
    assert sorted(b) == list(range(1, 13))
    np.testing.assert_allclose([b[s] for s in a], list(a.values()), rtol=1e-5)


def test_two_different_runs_visible_is_one_clear_error_before_any_step(dataset, tmp_path):
    """Each node's ``out`` holds a checkpoint of a different run: no rank guesses, both stop
    before a step with the ranks and paths named."""
    outs = [tmp_path / "node_a", tmp_path / "node_b"]
    for out in outs:  # two separate runs, same config
        torchrun(2, *base_args(dataset, out, mp=2, max_steps=2))
    nodes = _launch_two_nodes(dataset, outs, _free_port(), mp=2, max_steps=4)
    try:
        errs = [p.communicate(timeout=300)[1] for p in nodes]
    finally:
        for p in nodes:
            if p.poll() is None:
                kill_job(p)
    assert all(p.returncode != 0 for p in nodes)
    text = "\n".join(errs)
    assert "checkpoints of different runs" in text and str(outs[0]) in text and str(outs[1]) in text
    assert all(sorted(losses(out)) == [1, 2] for out in outs)  # nothing was trained or rewritten


@pytest.mark.timeout(900)
@pytest.mark.parametrize("order", [{}, {"data_order": "block", "block_shards": 2}], ids=["global", "block"])
def test_stopped_mid_epoch_at_2x2_resumes_on_other_layouts_exactly(dataset, tmp_path, order):
    """Elastic determinism: stopped at dp x mp = 2 x 2 in the middle of epoch 1, resumed at
    1 x 2, 2 x 1 and 1 x 1 with the same global batch: the per-step losses of an uninterrupted
    2 x 2 run (fp32, dropout 0), and the cut epoch's train_loss. In both sample orders."""
    import shutil

    common = dict(mp=2, max_steps=10, dropout=0.0, eval_every=0, **order)
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    torchrun(4, *base_args(dataset, whole, **common))
    torchrun(4, *base_args(dataset, stopped, **dict(common, max_steps=4)))  # 3 steps an epoch
    ref = losses(whole)
    for dp, mp in ((1, 2), (2, 1), (1, 1)):
        out = tmp_path / f"dp{dp}mp{mp}"
        shutil.copytree(stopped, out)
        torchrun(dp * mp, *base_args(dataset, out, **dict(common, mp=mp)))
        got = losses(out)
        assert sorted(got) == sorted(ref) == list(range(1, 11))
        np.testing.assert_allclose([got[s] for s in ref], list(ref.values()), rtol=1e-4,
                                   err_msg=f"resumed at dp x mp = {dp} x {mp}")
        np.testing.assert_allclose(_train_losses(out), _train_losses(whole), rtol=1e-4)


def test_paths_are_not_identities(dataset, tmp_path):
    """A moved dataset and ``--out`` spelled another way resume; another dataset (by content) is
    refused even with --override_config=True, which still accepts a changed hyper-parameter."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    out = tmp_path / "runs" / "x"
    torchrun(1, *base_args(data, out, max_steps=2))
    moved = tmp_path / "moved"
    data.rename(moved)
    (tmp_path / "elsewhere").mkdir()
    relative = os.path.relpath(tmp_path / "elsewhere" / ".." / "runs" / "x", ROOT)  # ../../tmp/...
    torchrun(1, *base_args(moved, relative, max_steps=4))
    assert sorted(losses(out)) == [1, 2, 3, 4]

    other = tmp_path / "other"
    shutil.copytree(moved, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["classes"][0]["name"] = "another dataset"
    (other / "manifest.json").write_text(json.dumps(manifest))
    res = torchrun(1, *base_args(other, out, max_steps=6, override_config=True), check=False)
    assert res.returncode != 0 and "is not the dataset" in res.stderr + res.stdout
    res = torchrun(1, *base_args(moved, out, max_steps=6, model="cifar_cnn", crop=32,
                                 override_config=True), check=False)
    assert res.returncode != 0 and "another network" in res.stderr + res.stdout
    torchrun(1, *base_args(moved, out, max_steps=6, lr=0.02, override_config=True))
    assert sorted(losses(out)) == list(range(1, 7))


def test_retention_through_the_trainer(dataset, tmp_path):
    """keep_last=2 plus the best epoch by val top-1 plus keep_epochs: the rest is deleted."""
    out = tmp_path / "run"
    torchrun(1, *base_args(dataset, out, max_steps=0, epochs=6, eval_every=1, keep_last=2,
                           keep_epochs=1, log_every=3))
    rows = _rows(out, "epoch")
    top1 = [r["val_top1"] for r in rows]
    best = top1.index(max(top1))  # the first epoch reaching the maximum
    want = {f"epoch{e:03d}.pt" for e in (4, 5, 1, best)} | {"latest.pt"}
    assert {p.name for p in (out / "checkpoints").iterdir()} == want
    assert torch.load(out / "checkpoints" / "latest.pt", weights_only=False)["best"] == \
        {"epoch": best, "top1": top1[best]}


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    """3 classes (odd: fc8 split 2 + 1 across the towers) x 8 train, 2 val, at 32 px."""
    from pipeline.prepare.convert import convert
    from tools import synthetic

    root = tmp_path_factory.mktemp("three")
    tree = synthetic.make_imagefolder(root / "tree", n_classes=3, train_per_class=8, val_per_class=2,
                                      sizes=((96, 72), (64, 64)), seed=3)
    convert(tree, root / "data", size=32, shard_size=8, workers=1, progress=False)
    return root / "data"


@pytest.mark.timeout(600)
def test_two_towers_with_an_odd_class_count_train_as_one_module(three_classes, tmp_path):
    """`--model=alexnet_small --mp=2` on 3 classes (refused before: "must be even") gives the
    one-module run's losses, and its checkpoint resumes at mp=1."""
    one, two = tmp_path / "one", tmp_path / "two"
    torchrun(1, *base_args(three_classes, one, mp=1, max_steps=6))
    torchrun(2, *base_args(three_classes, two, mp=2, max_steps=3))
    torchrun(1, *base_args(three_classes, two, mp=1, max_steps=6))
    a, b = losses(one), losses(two)
    assert sorted(b) == list(range(1, 7))
    np.testing.assert_allclose([b[s] for s in a], list(a.values()), rtol=1e-4)
    state = torch.load(two / "checkpoints" / "latest.pt", weights_only=False)
    assert state["model"]["fcs.2.weight"].shape[0] == 3  # fc8 whole: the layout-independent form


def test_evaluation_of_a_batchnorm_model_uses_one_set_of_statistics(dataset, tmp_path):
    """small_bn at dp=2: after its last step each rank's BatchNorm running statistics differ.
    Evaluation runs the unwrapped module (not the DDP wrapper) with rank 0's statistics: the
    epoch's val metrics equal a single-process evaluation of the epoch's checkpoint."""
    import pipeline
    import torch.nn.functional as F
    from trainer.models import build_model

    out = tmp_path / "bn"
    torchrun(2, *base_args(dataset, out, model="small_bn", max_steps=0, epochs=1, eval_every=1,
                           log_every=3))
    row = _rows(out, "epoch")[-1]
    model = build_model("small_bn", 4, 28, dropout=0.0)
    model.load_state_dict(torch.load(out / "checkpoints" / "epoch000.pt", weights_only=False)["model"])
    model.eval()
    loss = top1 = count = 0.0
    with torch.no_grad():
        for images, labels in pipeline.build_loader(dataset, "val", batch_size=8, crop=28, device="cpu",
                                                    mean="pixel", num_threads=1):
            logits = model(images)
            loss += F.cross_entropy(logits, labels, reduction="sum").item()
            top1 += (logits.argmax(1) == labels).sum().item()
            count += len(labels)
    assert count == 8
    np.testing.assert_allclose([row["val_loss"], row["val_top1"]], [loss / count, top1 / count], rtol=1e-5)
