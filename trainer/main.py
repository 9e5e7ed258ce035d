"""Train AlexNet (or alexnet_owt, vgg16, resnet50, small variants) on a dataset from
tools/prepare_imagenet.py, through the DALI loader, under torchrun.

    # one process (CPU or one GPU)
    python trainer/main.py --config=configs/alexnet_paper.yaml --data=DATA --mp=1
    # one node, 8 GPUs: 4 data-parallel x 2 model-parallel (AlexNet's two towers on a pair)
    torchrun --nproc_per_node=8 trainer/main.py --config=configs/alexnet_paper.yaml --data=DATA
    # two nodes (run on each; c10d rendezvous on the first node's address)
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \
        --rdzv_id=alexnet trainer/main.py --config=configs/alexnet_paper.yaml --data=DATA
    # restart crashed workers in place, resuming from the last checkpoint (the variable: a fresh
    # rendezvous store per attempt, else restarts fail on stale addresses; see RELIABILITY.md)
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --max-restarts=3 --nproc_per_node=8 \
        trainer/main.py --config=configs/alexnet_paper.yaml --data=DATA

Reads top to bottom: config -> distributed init -> data -> model -> optimizer -> resume -> loop.
Run it again with the same command and ``out`` and it resumes from out/checkpoints/latest.pt, the
newest one any rank sees (``out`` may be node-local), on any dp x mp layout (README, Resuming).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import pipeline
from pipeline.store import human
from pipeline.load.loader import default_threads
from trainer import checkpoint as ckpt
from trainer.config import ConfigError, check_resume, dataset_identity, make_config, save, to_dict
from trainer.guard import LossGuard
from trainer import evaluation
from trainer.metrics import Metrics, progress
from trainer.models import model_from_config
from trainer.optim import build_optimizer, set_lr
from trainer.parallel import all_reduce_sum, broadcast_buffers, cleanup, init_distributed
from trainer.schedule import Schedule
from trainer.evaluation import loader_args
from trainer.step import autocast, grad_scaler, optimize, precision_error
from trainer.timing import DataWait


class TrainingError(RuntimeError):
    pass


@dataclass
class Job:
    """What a run is made of, fixed once built: the loop's helpers take this, not a dozen arguments."""
    cfg: object
    mesh: object  # trainer.parallel.Dist
    out: Path
    model: torch.nn.Module  # the unwrapped module (checkpoints, evaluation)
    optimizer: torch.optim.Optimizer
    scaler: object  # GradScaler or None
    schedule: Schedule
    train_loader: object
    val_loaders: dict  # {"one": loader, "ten": loader}, as asked; empty: no evaluation
    n_val: int
    dataset: object  # the open pipeline.Dataset (a directory's or a bucket's)

    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"


@dataclass
class RunState:
    """What travels with every checkpoint besides the model, optimizer, schedule and loader
    position: the run's id, the dataset identity, the best val top-1 so far, an unfinished
    epoch's running sums, the guard's state; and whether this rank writes checkpoints."""
    id: str | None
    dataset: dict
    best: dict | None = None   # {"epoch", "top1"}
    sums: dict | None = None   # {"epoch": [loss x n, n], "log": [...]} of a mid-epoch checkpoint
    guard: object = None       # the saved state, then the live LossGuard
    writer: bool = False


def main(config: str | None = None, **overrides):
    """Train on a dataset from tools/prepare_imagenet.py (every key below: trainer/config.py).

    config: YAML file of key: value defaults (configs/*.yaml); --key=value overrides any of them
    """
    cfg = make_config(config, **overrides)
    out = Path(cfg.out)
    mesh = init_distributed(cfg.mp, cfg.device)
    if int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", 0)) and \
            os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        log(mesh, "note: torchrun restarts reuse one rendezvous store and can fail on stale peer "
               "addresses (pytorch/pytorch#135712); launch with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1")
    try:
        train(cfg, out, mesh)
    finally:
        cleanup()


def train(cfg, out: Path, mesh):
    # -- data ------------------------------------------------------------------------------------
    ds = pipeline.open_dataset(cfg.data, cache_dir=cfg.cache_dir or None, cache_limit=cfg.cache_limit or None)
    if cfg.batch_size % mesh.dp_size:
        raise ConfigError(f"batch_size {cfg.batch_size} (global) is not divisible by the "
                          f"{mesh.dp_size} data-parallel ranks")
    local_batch = cfg.batch_size // mesh.dp_size
    common = loader_args(cfg, mesh)
    why = "loader_threads" if cfg.loader_threads else default_threads()[1]
    train_loader = pipeline.build_loader(ds, "train", batch_size=local_batch, flip=cfg.flip,
                                         lighting=cfg.lighting, lighting_form=cfg.lighting_form,
                                         data_order=cfg.data_order, block_shards=cfg.block_shards,
                                         **common)
    train_loader.prepare()  # every DALI graph built before step 1, the val ones too
    val_loaders = {}  # empty: no evaluation
    if "val" in ds and cfg.eval_every > 0:
        val_loaders = evaluation.val_loaders(cfg, mesh, "val", local_batch, one_crop=True,
                                             ten_crop=cfg.ten_crop_eval, data=ds)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ConfigError(f"{cfg.data}: {len(ds['train'])} train samples make no global batch of "
                          f"{cfg.batch_size}")

    # -- model -----------------------------------------------------------------------------------
    model = model_from_config(cfg, len(ds.classes), mesh.mp_group, mesh.mp_size, mesh.mp_rank)
    model = model.to(mesh.device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)

    # -- optimizer -------------------------------------------------------------------------------
    optimizer = build_optimizer(model, cfg)
    schedule = Schedule(cfg, steps_per_epoch)
    net = DDP(model, process_group=mesh.dp_group, device_ids=[mesh.device.index] if mesh.device.type == "cuda" else None) \
        if mesh.dp_group is not None else model  # gradients averaged over the dp group only
    if cfg.compile:
        net = torch.compile(net)
    if precision_error(cfg.precision, mesh.device.type):
        raise ConfigError(precision_error(cfg.precision, mesh.device.type))
    amp = partial(autocast, mesh.device.type, cfg.precision)
    scaler = grad_scaler(cfg.precision)

    job = Job(cfg, mesh, out, model, optimizer, scaler, schedule, train_loader, val_loaders,
              len(ds["val"]) if val_loaders else 0, ds)

    # -- resume ----------------------------------------------------------------------------------
    ckpt_dir = job.ckpt_dir
    step, epoch, run = resume(job)
    if mesh.is_main:
        out.mkdir(parents=True, exist_ok=True)
        ckpt_dir.mkdir(exist_ok=True)
        save(cfg, out / "config.yaml")
    metrics = Metrics(out, mesh.is_main, resume_step=step, resume_epoch=epoch)
    guard = LossGuard(len(ds.classes), cfg.stall_steps, run.guard)  # stalls and blow-ups, said once
    run.guard = guard  # its state travels with every checkpoint
    log(mesh, f"{cfg.model}: {sum(p.numel() for p in model.parameters()) * mesh.mp_size:,} parameters, "
           f"world {mesh.world} = dp {mesh.dp_size} x mp {mesh.mp_size}, {mesh.device}, {cfg.precision}; "
           f"{len(ds['train'])} train images, {steps_per_epoch} steps/epoch of {cfg.batch_size}; "
           f"loader: {common['num_threads']} threads per rank ({why})")

    # -- loop ------------------------------------------------------------------------------------
    # first_bad: the first step whose loss was non-finite, -1 if none; kept on the device so the
    # step never syncs, read by check_finite at the next log or checkpoint
    first_bad = torch.full((), -1, dtype=torch.int64, device=mesh.device)
    checked = step  # check_finite has seen every step up to this one
    checkpoint = partial(save_checkpoint, job, run)
    carry = run.sums  # a mid-epoch checkpoint's running sums, reduced over dp
    total_steps = min(cfg.epochs * steps_per_epoch, cfg.max_steps or cfg.epochs * steps_per_epoch)  # for the ETA
    model.train()
    while not finished(cfg, step, epoch):
        train_loader.set_epoch(epoch)
        wait = DataWait(mesh.device)  # the loader's share of this epoch (device idle time on CUDA)
        loss_sum = torch.zeros(2, dtype=torch.float64, device=mesh.device)  # loss x n, n since the last log
        epoch_sum = torch.zeros(2, dtype=torch.float64, device=mesh.device)
        if carry is not None and mesh.dp_rank == 0:  # counted once: the dp reductions add the rest
            epoch_sum += torch.tensor(carry["epoch"], dtype=torch.float64, device=mesh.device)
            loss_sum += torch.tensor(carry["log"], dtype=torch.float64, device=mesh.device)
        carry = None
        t_epoch = t_log = time.perf_counter()
        n_images = log_images = 0
        for images, labels in wait.timed(train_loader):
            lr = schedule.lr(step)
            set_lr(optimizer, lr)
            with amp():
                loss = F.cross_entropy(net(images), labels, label_smoothing=cfg.label_smoothing)
            optimize(loss, optimizer, scaler)
            step += 1
            loss = loss.detach()
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step, first_bad)
            # (loss x n, n) sums on the device; n is a host int (a shape), so this bookkeeping adds
            # no host-device sync: the log window syncs once, in .item(). The step itself syncs
            # once in fp16 (GradScaler.step reads the inf check); fp32 and bf16 do not (README, GPU)
            batch_loss = loss.double() * len(labels)
            for sums in (loss_sum, epoch_sum):
                sums[0] += batch_loss
                sums[1] += len(labels)
            n_images += cfg.batch_size
            log_images += cfg.batch_size
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                checked = check_finite(model, first_bad, checked, step, epoch, ckpt_dir, mesh)
                all_reduce_sum(loss_sum, mesh.dp_group)  # the mean over the global batch
                mean_loss = (loss_sum[0] / loss_sum[1]).item()  # sync point
                t = time.perf_counter()
                metrics.log({"kind": "step", "step": step, "epoch": epoch, "loss": mean_loss, "lr": lr,
                             "img_per_s": log_images / (t - t_log),
                             "data_wait_frac": wait.seconds() / max(t - t_epoch, 1e-9)})
                log(mesh, f"epoch {epoch} " + progress(train_loader.last[1] + 1, steps_per_epoch, step, total_steps,
                                                    (t - t_log) * cfg.batch_size / log_images) +
                    f": loss {mean_loss:.4f} lr {lr:.5f} {log_images / (t - t_log):.0f} img/s")
                warning = guard.check(step, mean_loss)  # the same mean on every rank
                if warning:
                    metrics.log({**warning, "epoch": epoch})
                    log(mesh, f"warning (step {step}): {warning['message']}")
                loss_sum.zero_()
                t_log, log_images = t, 0
            if cfg.ckpt_every_steps and step % cfg.ckpt_every_steps == 0:
                checked = check_finite(model, first_bad, checked, step, epoch, ckpt_dir, mesh)
                checkpoint(step, sums=(epoch_sum, loss_sum))
            if cfg.max_steps and step >= cfg.max_steps:
                break
        checked = check_finite(model, first_bad, checked, step, epoch, ckpt_dir, mesh)
        if not train_loader.epoch_done(epoch):  # stopped mid-epoch by max_steps
            checkpoint(step, sums=(epoch_sum, loss_sum))
            break
        top1 = end_epoch(job, epoch, epoch_sum, n_images, wait.seconds(), time.perf_counter() - t_epoch,
                         metrics, amp)
        if top1 is not None and (run.best is None or top1 > run.best["top1"]):
            run.best = {"epoch": epoch, "top1": top1}  # retention keeps its checkpoint
        checkpoint(step, tag=f"epoch{epoch:03d}")
        epoch += 1
        if mesh.is_main:
            metrics.plot(out / "curves.png")
    if mesh.is_main:
        metrics.plot(out / "curves.png")
    metrics.close()
    log(mesh, f"done at step {step}, epoch {epoch}: {out}")


# -- the loop's helpers: each takes what it needs, the loop owns step, epoch and first_bad --------

def log(mesh, msg: str) -> None:
    if mesh.is_main:
        print(msg, flush=True)


def finished(cfg, step: int, epoch: int) -> bool:
    return bool(cfg.max_steps and step >= cfg.max_steps) or epoch >= cfg.epochs


def resume(job: Job) -> tuple[int, int, RunState]:
    """Collective, one decision for all ranks: (step, epoch, run) to start from. The newest
    checkpoint any rank's ``out`` holds is broadcast and restored (model, momentum, GradScaler,
    schedule, loader position, RNG); without one, (0, 0) with the dropout RNG seeded."""
    cfg, mesh = job.cfg, job.mesh
    dataset = dataset_identity(job.dataset)
    writer = ckpt.is_writer(job.ckpt_dir, mesh)  # collective
    state = ckpt.resume_state(job.ckpt_dir, mesh)  # collective: None, or the newest checkpoint on every rank
    if state is None:
        if (job.out / "config.yaml").exists():
            import yaml
            check_resume(yaml.safe_load((job.out / "config.yaml").read_text()), cfg)  # refuse another run's out
        torch.manual_seed(cfg.seed * 1000 + mesh.rank)  # dropout: its own stream on every rank
        return 0, 0, RunState(ckpt.new_run_id(mesh), dataset, writer=writer)
    changed = check_resume(state["config"], cfg, state.get("dataset"), dataset)
    if not ckpt.restore(state, job.model, job.optimizer, job.scaler, mesh):
        log(mesh, f"note: world size changed ({len(state['rng'])} -> {mesh.world}): dropout RNG differs")
    job.schedule.load_state_dict(state["schedule"])
    job.train_loader.load_state_dict(state["data"])
    step, epoch = state["step"], state["data"]["epoch"]
    log(mesh, f"resumed from {state['resumed_from']} at step {step}, epoch {epoch}" +
        (f" (config changes accepted: {changed})" if changed else ""))
    return step, epoch, RunState(state.get("run_id"), dataset, best=state.get("best"),
                                 sums=state.get("sums"), guard=state.get("guard"), writer=writer)


def save_checkpoint(job: Job, run: RunState, step: int, tag: str | None = None, sums=None) -> None:
    """Collective: latest.pt (and tag.pt, then retention) written atomically by every writer.
    ``sums``: the (epoch, since-log) running loss sums of an unfinished epoch, reduced here."""
    cfg, mesh = job.cfg, job.mesh
    reduced = {"epoch": [0.0, 0.0], "log": [0.0, 0.0]}
    if sums is not None:
        both = torch.stack(sums)  # a copy: the loop's own sums stay per rank
        all_reduce_sum(both, mesh.dp_group)
        reduced["epoch"], reduced["log"] = both.tolist()
    state = ckpt.capture(job.model, job.optimizer, job.scaler, mesh, schedule=job.schedule.state_dict(),
                         data=job.train_loader.state_dict(), sums=reduced, best=run.best, step=step,
                         config=to_dict(cfg), run_id=run.id, dataset=run.dataset,
                         guard=run.guard.state_dict())
    if run.writer:
        ckpt.save_atomic(state, job.ckpt_dir / "latest.pt")
        if tag:
            ckpt.save_atomic(state, job.ckpt_dir / f"{tag}.pt")
            ckpt.prune(job.ckpt_dir, cfg.keep_last, cfg.keep_epochs, run.best["epoch"] if run.best else None)


def check_finite(model, first_bad: torch.Tensor, since: int, step: int, epoch: int, ckpt_dir: Path,
                 mesh) -> int:
    """Collective: stop every rank if any saw a NaN/inf loss in steps since+1..step, or holds a
    non-finite weight (an overflowing update can follow a finite loss). Every checkpoint is
    written after this check, so latest.pt stays the last good state. Returns step: checked."""
    finite = torch.stack([p.detach().isfinite().all() for p in model.parameters()]).all()
    flag = torch.stack([first_bad >= 0, ~finite]).double()
    all_reduce_sum(flag, mesh.dp_group)
    all_reduce_sum(flag, mesh.mp_group)  # the towers hold different weights
    bad_loss, bad_weights = flag.tolist()  # sync point
    if bad_loss or bad_weights:
        span = f"step {step}" if since + 1 == step else f"steps {since + 1}..{step}"
        where = f"step {first_bad.item()}" if first_bad.item() >= 0 else span
        what = f"loss at {where}" if bad_loss else f"weights after {span}"
        last = ckpt.latest(ckpt_dir)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        raise TrainingError(f"non-finite {what} (epoch {epoch}); stopped, {kept}")
    return step


def end_epoch(job: Job, epoch: int, epoch_sum: torch.Tensor, n_images: int, wait: float,
              elapsed: float, metrics, amp) -> float | None:
    """Collective: the finished epoch's row (train loss reduced over dp, val metrics when due, the
    plateau check that may cut the lr) logged to metrics.jsonl and the console. Evaluates the
    unwrapped module with dp rank 0's buffers. Returns the one-crop val top-1 (None: no eval)."""
    cfg, mesh, model, val_loaders = job.cfg, job.mesh, job.model, job.val_loaders
    all_reduce_sum(epoch_sum, mesh.dp_group)
    row = {"kind": "epoch", "epoch": epoch, "train_loss": (epoch_sum[0] / epoch_sum[1]).item(),
           "val_loss": None, "val_top1": None, "val_top5": None, "val_top1_10crop": None,
           "img_per_s": n_images / elapsed, "data_wait_frac": wait / elapsed}
    if val_loaders and (epoch + 1) % cfg.eval_every == 0:
        broadcast_buffers(model, mesh)
        one = evaluation.evaluate(model, val_loaders["one"], mesh, amp, False, job.n_val)
        row.update(val_loss=one["loss"], val_top1=one["top1"], val_top5=one["top5"])
        if "ten" in val_loaders:
            row["val_top1_10crop"] = evaluation.evaluate(model, val_loaders["ten"], mesh, amp, True, job.n_val)["top1"]
        if job.schedule.observe(one["top1"]):
            log(mesh, f"val top-1 plateaued: lr cut {job.schedule.cuts} of {cfg.plateau_max_cuts}")
    metrics.log(row)
    log(mesh, "epoch {epoch}: train loss {train_loss:.4f}".format(**row) +
        (" val loss {val_loss:.4f} top-1 {val_top1:.4f} top-5 {val_top5:.4f}".format(**row)
         if row["val_loss"] is not None else "") +
        (" top-1 10-crop {:.4f}".format(row["val_top1_10crop"]) if row["val_top1_10crop"] is not None else "") +
        f", {row['img_per_s']:.0f} img/s")
    if row["data_wait_frac"] > 0.05:
        log(mesh, f"epoch {epoch}: data-bound: training waited for the loader "
               f"{100 * row['data_wait_frac']:.0f}% of the time")
    store = job.train_loader.cache_stats()
    if store is not None:  # a dataset in a bucket: this process's fetches so far, in the log
        log(mesh, f"epoch {epoch}: store: {human(store['bytes_fetched'])} fetched in "
                  f"{store['shards_fetched']} shards ({human(store['bytes_refetched'])} of them again), "
                  f"{store['waited_s']:.1f} s waited for shards")
    return row["val_top1"]


if __name__ == "__main__":
    from pipeline.cli import run_cli
    from trainer.config import cli_options

    run_cli(main, known=(TrainingError, evaluation.EvaluationError), extra={"": cli_options()})
