"""Is the run learning? A loss that stays at chance (ln C for C classes) or climbs far above it is
said once, in the log and in metrics.jsonl, with what to try; a non-finite loss stops the run
(trainer/main.py, check_finite). The paper's AlexNet init does both on real data (biases of 1:
BENCHMARKS.md, "Learning"), and Caffe's users saw runs stall at ln 1000 = 6.9 for thousands of
iterations, so this is checked on every logged loss rather than left to a reader of the curves."""
from __future__ import annotations

import math

STALL = 0.98        # a run whose loss is not below 0.98 ln C by stall_steps has not started learning
BLOW_UP = 2.0       # a logged loss above ln C + 2 after step 1: diverging
TRY = ("try bias_init=0.1 (Caffe's bvlc_alexnet; configs/alexnet_paper.yaml's value), a lower lr or "
       "warmup_epochs; tools/benchmark.py learn compares recipes side by side")


class LossGuard:
    def __init__(self, classes: int, stall_steps: int, state: dict | None = None):
        self.classes, self.chance, self.stall_steps = classes, math.log(max(classes, 1)), stall_steps
        self.best = state["best"] if state else math.inf           # lowest logged loss so far
        self.warned = set(state["warned"]) if state else set()     # each kind is said once a run

    def state_dict(self) -> dict:
        return {"best": self.best, "warned": sorted(self.warned)}

    def check(self, step: int, loss: float) -> dict | None:
        """The warning row for this logged loss (mean since the last log), or None."""
        self.best = min(self.best, loss)
        if self.classes < 2:
            return None
        if "blow-up" not in self.warned and step > 1 and loss > self.chance + BLOW_UP:
            self.warned.add("blow-up")
            return self._row("blow-up", step, loss,
                             f"loss {loss:.3f} at step {step} is above ln C + {BLOW_UP:g} = "
                             f"{self.chance + BLOW_UP:.3f} (chance: ln {self.classes} = {self.chance:.3f}): "
                             f"the run is diverging")
        if "stall" not in self.warned and self.stall_steps and step >= self.stall_steps \
                and self.best >= STALL * self.chance:
            self.warned.add("stall")
            return self._row("stall", step, loss,
                             f"loss not below {STALL:g} ln C = {STALL * self.chance:.3f} after {step} steps "
                             f"(lowest logged {self.best:.3f}; chance: ln {self.classes} = "
                             f"{self.chance:.3f}): the run is not learning")
        return None

    def _row(self, what: str, step: int, loss: float, message: str) -> dict:
        return {"kind": "warning", "warning": what, "step": step, "loss": loss,
                "message": f"{message}; {TRY}"}
