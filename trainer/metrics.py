"""metrics.jsonl (one JSON row per log), TensorBoard events, and a PNG of the training curves.
Written by global rank 0 only; on resume, rows past the checkpoint are dropped first."""
from __future__ import annotations

import json
import time
from pathlib import Path


class Metrics:
    def __init__(self, out: Path, enabled: bool, resume_step: int = 0, resume_epoch: int = 0):
        self.path, self.enabled = out / "metrics.jsonl", enabled
        self.rows, self.tb = [], None
        if not enabled:
            return
        if self.path.exists():  # keep what the checkpoint we resume from had already seen
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line cut by a kill
                if (row["kind"] in ("step", "warning") and row["step"] <= resume_step) or \
                        (row["kind"] == "epoch" and row["epoch"] < resume_epoch):
                    self.rows.append(row)
            self.path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(out / "tb"), purge_step=resume_step or None)
        except ImportError:
            self.tb = None

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        self.rows.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            x = row["step"] if row["kind"] == "step" else row["epoch"]
            for key, value in row.items():
                if key not in ("kind", "step", "epoch") and isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{row['kind']}/{key}", value, x)
            self.tb.flush()

    def plot(self, path: Path) -> None:
        """curves.png: train loss per step, val loss and top-1/top-5 per epoch."""
        if not self.enabled:
            return
        fig = figure(self.rows)  # selects the Agg backend before pyplot is imported here
        import matplotlib.pyplot as plt

        fig.savefig(path, dpi=90)
        plt.close(fig)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def figure(rows: list[dict]):
    """The curves of metrics rows: loss against steps (val loss at each epoch's last logged step),
    accuracy against whole epochs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    steps = [r for r in rows if r["kind"] == "step"]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    end_step = {}  # an epoch row sits at the last logged step of its epoch
    for r in steps:
        end_step[r["epoch"]] = max(end_step.get(r["epoch"], 0), r["step"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot([r["step"] for r in steps], [r["loss"] for r in steps], "-" if len(steps) > 1 else "o",
           label="train loss (step)")  # one logged step: a dot, not an invisible line
    ev = [r for r in epochs if r.get("val_loss") is not None]
    placed = [r for r in ev if r["epoch"] in end_step]
    if placed:
        a.plot([end_step[r["epoch"]] for r in placed], [r["val_loss"] for r in placed], "r.-",
               label="val loss (epoch end)")
    for key in ("val_top1", "val_top5", "val_top1_10crop"):
        pts = [(r["epoch"], r[key]) for r in ev if r.get(key) is not None]
        if pts:
            b.plot(*zip(*pts), ".-", label=key)
    a.set_title("loss")
    a.set_xlabel("step")
    a.set_ylabel("cross-entropy loss")
    a.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if a.get_legend_handles_labels()[0]:
        a.legend(loc="upper right")
    b.set_title("validation accuracy")
    b.set_xlabel("epoch")
    b.set_ylabel("accuracy (fraction correct)")
    b.set_ylim(0, 1)
    # epochs are whole: no 0.5 ticks, even for a single epoch (matplotlib's default wants two ticks
    # and falls back to fractions on a span shorter than one)
    b.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if b.get_legend_handles_labels()[0]:
        b.legend()
    fig.tight_layout()
    return fig


def duration(seconds: float) -> str:
    """12s, 4m05s, 3h07m: an ETA at a glance."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def progress(k: int, per_epoch: int, step: int, total: int, seconds_per_step: float) -> str:
    """'step k/N of the epoch' and the ETAs of the epoch's end and the run's, at the current rate."""
    return (f"step {k}/{per_epoch} (global {step}/{total}) "
            f"ETA epoch {duration((per_epoch - k) * seconds_per_step)}, "
            f"run {duration((total - step) * seconds_per_step)}")


def with_progress(batches, enabled: bool, what: str, lines: int = 10):
    """Yield ``batches``, printing 'what: batch k/N' about ``lines`` times on the way (evaluation
    of a large val split takes minutes: show that it moves)."""
    n = len(batches)
    every = max(1, -(-n // lines))
    t = time.perf_counter()
    for k, batch in enumerate(batches, start=1):
        yield batch
        if enabled and (k % every == 0 or k == n):
            rate = k / max(time.perf_counter() - t, 1e-9)
            print(f"{what}: batch {k}/{n}, ETA {duration((n - k) / rate)}", flush=True)
