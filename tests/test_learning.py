"""Does the shipped paper recipe learn? The paper's AlexNet at 224 px on three real Fashion-MNIST
classes converted at 256 px (Debian's dataset-fashion-mnist), and the guard that says when a run
stalls at ln C or blows up, against hand-fed losses and in real trainer runs."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import MAIN, ROOT, base_args, torchrun
from tools.bench.learn import idx_subset
from trainer.guard import LossGuard

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").exists(),
                                   reason="needs Debian's dataset-fashion-mnist (make test installs it as root)")
LN3 = math.log(3)


def _rows(out: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


# -- the guard, hand-fed ---------------------------------------------------------------------------

def test_guard_says_a_blow_up_once_and_never_at_step_1():
    ln10 = math.log(10)
    guard = LossGuard(10, stall_steps=0)
    assert guard.check(1, 50.0) is None                 # step 1: the init's loss, whatever it is
    assert guard.check(2, ln10 + 1.99) is None
    row = guard.check(3, ln10 + 2.01)
    assert row["warning"] == "blow-up" and row["step"] == 3 and "4.303" in row["message"]
    assert "bias_init=0.1" in row["message"]            # what to try
    assert guard.check(4, 30.0) is None                 # said once


def test_guard_says_a_stall_once_at_stall_steps():
    ln10 = math.log(10)
    guard = LossGuard(10, stall_steps=5)
    for step, loss in ((1, 2.40), (2, 2.31), (3, 2.30), (4, 0.981 * ln10)):
        assert guard.check(step, loss) is None          # before stall_steps: nothing
    row = guard.check(5, 2.35)                          # lowest so far 0.981 ln C >= 0.98 ln C
    assert row["warning"] == "stall" and "2.259" in row["message"] and "2.257" in row["message"]
    assert guard.check(6, 2.35) is None
    learning = LossGuard(10, stall_steps=5)
    for step, loss in ((1, 2.4), (2, 0.979 * ln10), (3, 2.4), (4, 2.4), (5, 2.4)):
        assert learning.check(step, loss) is None       # it went below once: not a stall


def test_guard_state_survives_a_resume():
    guard = LossGuard(10, stall_steps=2)
    guard.check(1, 2.3)
    assert guard.check(2, 2.3)["warning"] == "stall"
    again = LossGuard(10, stall_steps=2, state=json.loads(json.dumps(guard.state_dict())))
    assert again.check(3, 2.3) is None and again.best == 2.3


def test_a_stalled_trainer_run_says_so_once(dataset, tmp_path):
    """lr 0: the loss stays at the init's, near ln 4; with stall_steps 3 the trainer writes one
    warning row and one log line."""
    out = tmp_path / "stall"
    res = torchrun(1, *base_args(dataset, out, lr=0.0, max_steps=6, stall_steps=3))
    warnings = _rows(out, "warning")
    assert [w["warning"] for w in warnings] == ["stall"] and warnings[0]["step"] == 3
    assert res.stdout.count("the run is not learning") == 1


# -- real data at 224 px -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    """Trouser, Sneaker, Bag: 100 train and 30 val images each, converted at 256 px."""
    from pipeline.prepare.convert import convert
    root = tmp_path_factory.mktemp("fashion3")
    src = idx_subset(FASHION, root / "src", 100, 30, classes=[1, 7, 8])
    convert(src, root / "data", size=256, workers=1, progress=False)
    return root / "data"


def _paper_run(data: Path, out: Path, steps: int, *extra: str):
    args = [f"--config={ROOT / 'configs' / 'alexnet_paper.yaml'}", f"--data={data}", f"--out={out}",
            "--mp=1", "--batch_size=32", f"--max_steps={steps}", "--log_every=1", "--eval_every=0",
            "--ten_crop_eval=False", "--ckpt_every_steps=0", *extra]
    res = subprocess.run([sys.executable, MAIN, *args], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return {r["step"]: r["loss"] for r in _rows(out, "step")}, res


@needs_fashion
@pytest.mark.timeout(900)
def test_the_shipped_paper_recipe_learns_real_classes_at_224(three_classes, tmp_path):
    """configs/alexnet_paper.yaml as shipped (mp=1), batch 32: no loss above ln C + 0.5 after
    step 1, and the mean of steps 21-30 below half of ln C (chance). Measured on an AVX-512 EPYC:
    1.10 at step 1, at most 1.11 after it, 0.40 over steps 21-30."""
    steps = 30
    loss, res = _paper_run(three_classes, tmp_path / "shipped", steps)
    assert sorted(loss) == list(range(1, steps + 1))
    assert max(loss[s] for s in loss if s > 1) < LN3 + 0.5, loss
    last = sum(loss[s] for s in range(steps - 9, steps + 1)) / 10
    assert last < 0.5 * LN3, loss
    assert _rows(tmp_path / "shipped", "warning") == [] and "warning" not in res.stdout


@needs_fashion
@pytest.mark.timeout(900)
def test_the_papers_text_values_blow_up_and_the_guard_says_so(three_classes, tmp_path):
    """The paper's text (N(0, 0.01), biases 1, torch's dropout), one flag away from the shipped
    recipe, on the same data: the loss leaves ln C + 2 within a few steps; the guard says so."""
    loss, res = _paper_run(three_classes, tmp_path / "text", 6, "--init=paper", "--bias_init=1.0",
                           "--dropout_form=inverted", "--bias_lr_mult=1.0")
    assert max(loss.values()) > LN3 + 2, loss
    assert [w["warning"] for w in _rows(tmp_path / "text", "warning")] == ["blow-up"]
    assert "the run is diverging" in res.stdout
