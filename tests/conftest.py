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


@pytest.fixture
def full_disk(monkeypatch):
    """Every file casm writes atomically fails with ENOSPC after ``limit`` bytes, as on a full disk."""
    import builtins
    import errno

    import casm.checkpoints as checkpoints

    def fill(limit: int = 0):
        class Full:
            def __init__(self, file):
                self.file, self.written = file, 0

            def write(self, data):
                self.written += len(data)
                if self.written > limit:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return self.file.write(data)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.file.close()

            def __getattr__(self, name):
                return getattr(self.file, name)

        monkeypatch.setattr(checkpoints, "open", lambda *a, **k: Full(builtins.open(*a, **k)), raising=False)

    return fill
