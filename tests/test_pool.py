"""Thinning strategies keep the right snapshots (docs/training.md)."""

import pytest
import torch
from torch import nn

from casm.training.pool import STRATEGIES, ClassifierPool, ThinningStrategy, resolve_strategy


def _run(strategy: ThinningStrategy, steps: int, batch: int = 1, reference: int | None = None
         ) -> tuple[ClassifierPool, nn.Linear]:
    model = nn.Linear(1, 1, bias=False)
    pool = ClassifierPool(strategy, 0, batch, reference)
    for step in range(steps):
        with torch.no_grad():
            model.weight.fill_(step)  # the weight records the step a snapshot was taken at
        if pool.wants_snapshot(step):
            pool.add(model, step)
    return pool, model


@pytest.mark.parametrize("name", ["F", "L"])
def test_no_pool(name):
    pool, _ = _run(STRATEGIES[name], 50)
    assert len(pool) == 0
    assert all(pool.draw_evaluator() is None for _ in range(100))


def test_fl_keeps_only_the_first_classifier():
    pool, _ = _run(STRATEGIES["FL"], 500)
    assert pool.snapshot_steps == [0]
    assert pool.snapshots[0]["weight"].item() == 0.0


def test_l100_snapshots_every_100_and_evicts_at_random():
    pool, model = _run(STRATEGIES["L100"], 5000)  # 50 snapshots offered, capacity 30
    assert len(pool) == 30
    assert all(s % 100 == 0 for s in pool.snapshot_steps)
    assert pool.snapshot_steps[-1] == 4900  # the newest is always kept
    assert pool.snapshot_steps != list(range(2000, 5000, 100))  # random eviction, not FIFO
    # snapshots are copies, frozen at their step
    assert [s["weight"].item() for s in pool.snapshots] == pool.snapshot_steps
    assert model.weight.item() == 4999


def test_l1000_interval_and_override():
    pool, _ = _run(STRATEGIES["L1000"], 3500)
    assert pool.snapshot_steps == [0, 1000, 2000, 3000]
    custom = resolve_strategy("L1000", snapshot_every=10, capacity=2, p_pool=1.0)
    pool, _ = _run(custom, 100)
    assert len(pool) == 2 and pool.snapshot_steps[-1] == 90
    assert all(pool.draw_evaluator() is not None for _ in range(20))


def test_evaluator_drawn_with_p_pool():
    pool, _ = _run(STRATEGIES["L100"], 1000)
    draws = [pool.draw_evaluator() for _ in range(4000)]
    share = sum(d is not None for d in draws) / len(draws)
    assert share == pytest.approx(0.5, abs=0.03)
    assert set(d for d in draws if d is not None) == set(range(len(pool)))


def test_state_round_trip_continues_the_same_draws():
    pool, _ = _run(STRATEGIES["L100"], 1000)
    state = pool.state_dict()
    expected = [pool.draw_evaluator() for _ in range(50)]
    restored = ClassifierPool(STRATEGIES["L100"], seed=123)
    restored.load_state_dict(state)
    assert restored.snapshot_steps == pool.snapshot_steps
    assert [restored.draw_evaluator() for _ in range(50)] == expected
    with pytest.raises(ValueError, match="casm.thinning=L100"):
        ClassifierPool(STRATEGIES["FL"]).load_state_dict(state)


def test_a_retried_step_does_not_snapshot_twice():
    """A non-finite step is skipped and tried again at the same step count: its snapshot exists."""
    pool = ClassifierPool(resolve_strategy("L100"))
    model = torch.nn.Linear(2, 2)
    assert pool.wants_snapshot(0)
    pool.add(model, 0)
    assert not pool.wants_snapshot(0) and pool.wants_snapshot(100)


@pytest.mark.parametrize("batch, expected", [
    (128, [0, 1000, 2000, 3000]),  # the paper's batch: every 1000 steps
    (1024, [0, 125, 250, 375]),  # 8x the batch: every 125 steps = the same 128 000 images
    (384, [0, 334, 667, 1000]),  # 3x: the first step whose images reach each multiple of 128 000
    (64, [0, 2000, 4000, 6000]),  # half the batch: twice the steps
])
def test_snapshot_interval_counts_images_at_the_reference_batch(batch, expected):
    pool, _ = _run(resolve_strategy("L1000", capacity=100), 448_000 // batch, batch=batch, reference=128)
    assert pool.snapshot_steps == expected
