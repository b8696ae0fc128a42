"""Equal training budgets: data.epoch_images makes an epoch a fixed number of images, whatever the
training split's size, so schedules counted in epochs mean the same number of optimizer steps."""

from collections import Counter

import pytest

from casm.config import ConfigError
from casm.data.datamodule import EpochShuffleSampler, LocalizationDataModule


def test_a_small_split_is_cycled_in_whole_shuffled_passes():
    order = list(EpochShuffleSampler(20, seed=3, epoch_length=100))
    assert len(order) == 100
    assert set(Counter(order).values()) == {5}  # every image exactly once per pass, 5 passes
    for start in range(0, 100, 20):
        assert sorted(order[start:start + 20]) == list(range(20))
    assert order[:20] != order[20:40]  # each pass its own order


def test_the_ranks_share_one_cycled_order():
    whole = list(EpochShuffleSampler(20, seed=3, epoch_length=60))
    ranks = [list(EpochShuffleSampler(20, seed=3, rank=r, world_size=2, epoch_length=60)) for r in (0, 1)]
    assert ranks[0] == whole[0::2] and ranks[1] == whole[1::2]


def test_no_epoch_images_is_the_old_order():
    sampler = EpochShuffleSampler(50, seed=1)
    assert len(sampler) == 50 and sorted(sampler) == list(range(50))


def _steps_per_epoch(tiny_cfg, *extra):
    cfg = tiny_cfg("data.num_train=320", *extra)
    dm = LocalizationDataModule(cfg.data, cfg.seed)
    dm.setup()
    return len(dm.train_set), len(dm.train_dataloader())


def test_a_five_times_smaller_set_gets_the_same_steps(tiny_cfg):
    full_images, full_steps = _steps_per_epoch(tiny_cfg, "data.epoch_images=320")
    small_images, small_steps = _steps_per_epoch(tiny_cfg, "data.epoch_images=320", "data.samples_per_class=6")
    assert full_images == 320 and small_images == 60  # 10 classes x 6: more than 5x smaller
    assert full_steps == small_steps == 320 // 16
    assert _steps_per_epoch(tiny_cfg, "data.samples_per_class=6")[1] == 60 // 16  # epochs: 5x fewer steps


def test_a_training_run_takes_the_budget_in_optimizer_steps(tiny_cfg):
    from casm.checkpoints import read_checkpoint
    from casm.training.run import train

    steps = {}
    for name, extra in {"full": [], "small": ["data.samples_per_class=2"]}.items():
        cfg = tiny_cfg("data.epoch_images=64", "trainer.max_epochs=1", f"logging.name={name}", *extra)
        run_dir = train(cfg)
        steps[name] = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"]
    assert steps["full"] == steps["small"] > 0


def test_an_epoch_smaller_than_a_batch_is_refused(tiny_cfg):
    with pytest.raises(ConfigError, match="data.epoch_images=8 is less than one batch"):
        tiny_cfg("data.epoch_images=8")
