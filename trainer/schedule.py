"""Learning-rate schedules, per step: linear warm-up, then plateau (the paper), step or cosine."""
from __future__ import annotations

import math


class Schedule:
    def __init__(self, cfg, steps_per_epoch: int):
        self.cfg, self.steps_per_epoch = cfg, steps_per_epoch
        self.cuts, self.best, self.bad_epochs = 0, -math.inf, 0  # plateau state

    def lr(self, step: int) -> float:
        cfg, epoch = self.cfg, step / self.steps_per_epoch  # fractional epoch
        warm = cfg.warmup_epochs * self.steps_per_epoch
        factor = (step + 1) / warm if step < warm else 1.0
        if cfg.lr_schedule == "plateau":
            factor *= cfg.lr_factor ** self.cuts
        elif cfg.lr_schedule == "step":
            factor *= cfg.lr_factor ** int(epoch // cfg.lr_step_epochs)
        else:  # cosine over the run after warm-up
            span = max(cfg.epochs - cfg.warmup_epochs, 1e-9)
            progress = min(max(epoch - cfg.warmup_epochs, 0.0) / span, 1.0)
            factor *= 0.5 * (1 + math.cos(math.pi * progress))
        return cfg.lr * factor

    def observe(self, val_top1: float) -> bool:
        """Plateau: after an evaluation; True if the rate was cut (paper: when val error stops
        improving, divide by 10, at most three times)."""
        if self.cfg.lr_schedule != "plateau":
            return False
        if val_top1 > self.best:
            self.best, self.bad_epochs = val_top1, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs > self.cfg.plateau_patience - 1 and self.cuts < self.cfg.plateau_max_cuts:
            self.cuts, self.bad_epochs = self.cuts + 1, 0
            return True
        return False

    def state_dict(self) -> dict:
        return {"cuts": self.cuts, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.cuts, self.best, self.bad_epochs = state["cuts"], state["best"], state["bad_epochs"]
