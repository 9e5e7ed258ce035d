"""trainer/schedule.py against hand-computed rates: warm-up, step, cosine, plateau patience and
cuts, and the state round trip (a resumed run continues the same schedule)."""
import math
from types import SimpleNamespace

import pytest

from trainer.schedule import Schedule


def cfg(**kw):
    base = dict(lr=0.1, lr_schedule="step", lr_factor=0.1, lr_step_epochs=30, warmup_epochs=0,
                epochs=90, plateau_patience=1, plateau_max_cuts=3)
    return SimpleNamespace(**{**base, **kw})


def test_linear_warm_up_reaches_the_rate_at_the_end_of_its_epochs():
    s = Schedule(cfg(warmup_epochs=2), steps_per_epoch=10)  # 20 warm-up steps
    assert s.lr(0) == pytest.approx(0.1 * 1 / 20)
    assert s.lr(9) == pytest.approx(0.1 * 10 / 20)
    assert s.lr(19) == pytest.approx(0.1)
    assert s.lr(20) == pytest.approx(0.1) and s.lr(25) == pytest.approx(0.1)


def test_step_divides_by_ten_every_30_epochs():
    s = Schedule(cfg(), steps_per_epoch=100)
    assert s.lr(0) == pytest.approx(0.1) and s.lr(2999) == pytest.approx(0.1)
    assert s.lr(3000) == pytest.approx(0.01) and s.lr(5999) == pytest.approx(0.01)
    assert s.lr(6000) == pytest.approx(0.001) and s.lr(8999) == pytest.approx(0.001)


def test_cosine_after_warm_up_halves_at_the_middle_and_ends_at_zero():
    s = Schedule(cfg(lr_schedule="cosine", warmup_epochs=2, epochs=12), steps_per_epoch=10)
    assert s.lr(20) == pytest.approx(0.1)                    # start of the cosine: epoch 2
    assert s.lr(70) == pytest.approx(0.05)                   # epoch 7: half of the 10 cosine epochs
    assert s.lr(45) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.25)))  # epoch 4.5
    assert s.lr(120) == pytest.approx(0.0, abs=1e-12) and s.lr(500) == pytest.approx(0.0, abs=1e-12)


def test_plateau_cuts_after_patience_epochs_without_improvement_at_most_max_cuts():
    s = Schedule(cfg(lr_schedule="plateau", plateau_patience=2, plateau_max_cuts=2), steps_per_epoch=10)
    # top-1 per epoch: improves, improves, flat, flat (cut 1), worse, worse (cut 2), worse x 3 (no more)
    cuts = [s.observe(v) for v in (0.1, 0.2, 0.2, 0.15, 0.19, 0.18, 0.1, 0.1, 0.1)]
    assert cuts == [False, False, False, True, False, True, False, False, False]
    assert s.cuts == 2 and s.lr(0) == pytest.approx(0.1 * 0.01)
    patient = Schedule(cfg(lr_schedule="plateau", plateau_patience=1), steps_per_epoch=10)
    assert [patient.observe(v) for v in (0.3, 0.3, 0.4, 0.2)] == [False, True, False, True]


def test_other_schedules_ignore_evaluations():
    s = Schedule(cfg(lr_schedule="step"), steps_per_epoch=10)
    assert not any(s.observe(v) for v in (0.5, 0.1, 0.1, 0.1)) and s.lr(0) == pytest.approx(0.1)


def test_state_round_trip_continues_the_same_schedule():
    c = cfg(lr_schedule="plateau", plateau_patience=2, plateau_max_cuts=3)
    whole, first = Schedule(c, 10), Schedule(c, 10)
    seq = (0.1, 0.2, 0.2, 0.2, 0.25, 0.2, 0.2, 0.2, 0.2)
    for v in seq[:4]:
        whole.observe(v)
        first.observe(v)
    resumed = Schedule(c, 10)
    resumed.load_state_dict(first.state_dict())
    assert [whole.observe(v) for v in seq[4:]] == [resumed.observe(v) for v in seq[4:]]
    assert resumed.state_dict() == whole.state_dict() and resumed.lr(0) == whole.lr(0)
