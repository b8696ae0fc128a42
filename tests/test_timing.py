"""EpochTimer separates the training batches' time from the validation time."""

import time

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from casm.training.timing import EpochTimer

TRAIN_SLEEP, VAL_SLEEP = 0.05, 0.2


class SleepyModule(pl.LightningModule):
    """Two training batches of TRAIN_SLEEP s and one validation batch of VAL_SLEEP s per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        time.sleep(TRAIN_SLEEP)
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        time.sleep(VAL_SLEEP)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_epoch_timer_logs_training_and_whole_epoch_time():
    data = DataLoader(TensorDataset(torch.zeros(4, 2)), batch_size=2)
    trainer = pl.Trainer(max_epochs=1, callbacks=[EpochTimer()], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         num_sanity_val_steps=0, limit_val_batches=1)
    trainer.fit(SleepyModule(), train_dataloaders=data, val_dataloaders=data)
    train_s = trainer.callback_metrics["time/train_epoch_s"].item()
    epoch_s = trainer.callback_metrics["time/epoch_s"].item()
    assert train_s >= 2 * TRAIN_SLEEP
    assert epoch_s - train_s >= VAL_SLEEP  # validation counted in the epoch, not in the training time
