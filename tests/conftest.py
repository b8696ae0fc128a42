"""Shared fixtures: tiny configs and models so the whole suite runs in minutes on 2 CPU cores."""

from __future__ import annotations

import pytest
import torch

from casm.config import load_config

TINY = [
    "model.width=4", "masker.hidden=8", "data.image_size=32", "data.num_train=64", "data.num_val=32",
    "data.batch_size=16", "trainer.max_epochs=2", "casm.warmup_epochs=0", "logging.progress_bar=false",
    "logging.image_every_n_steps=2", "trainer.accelerator=cpu",
]


@pytest.fixture
def tiny_overrides(tmp_path) -> list[str]:
    return TINY + [f"logging.out_dir={tmp_path / 'runs'}"]


@pytest.fixture
def tiny_cfg(tiny_overrides):
    def make(*extra: str):
        return load_config(None, tiny_overrides + list(extra))

    return make


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory):
    """One tiny CASM run (1 epoch, deconv head) shared by the export and evaluation tests."""
    from casm.training.run import train

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, TINY + [f"logging.out_dir={out}", "trainer.max_epochs=1", "masker.head=deconv"])
    return train(cfg) / "checkpoints" / "last.ckpt"
