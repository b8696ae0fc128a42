"""Count the host synchronizations inside one CASM training step.

Every ``.item()``, ``float(t)``, ``bool(t)`` or ``int(t)`` of a tensor runs ``aten::_local_scalar_dense``:
on a GPU it waits until the device has finished all queued work, so the CPU cannot queue the next
kernels ahead. This script counts those calls with ``torch.profiler`` over whole training batches
(from one ``on_train_batch_start`` to the next: the module's step and Lightning's bookkeeping
and logging of it) after a few warm-up steps, for a step that is not a logging step and for one that is.

    python benchmarks/host_syncs.py                        # ResNet-18, tiny and fast on a CPU
    python benchmarks/host_syncs.py --arch resnet50 --width 64

Random draws of the pool's CPU generator are read through NumPy (host memory, no device involved),
so what is counted is what would stall a GPU.
"""

from __future__ import annotations

import argparse
import tempfile

import pytorch_lightning as pl
import torch
from torch.profiler import ProfilerActivity, profile

from casm.config import load_config
from casm.data.datamodule import LocalizationDataModule
from casm.training.module import CASMModule

SYNC_OP = "aten::_local_scalar_dense"


class SyncCounter(pl.Callback):
    """Profiles each whole training batch, from its ``on_train_batch_start`` to the next one's (so
    Lightning's logging after the step is counted too), recording (syncs, optimizer counter reads)."""

    def __init__(self) -> None:
        self.counts: dict[int, tuple[int, int]] = {}
        self._prof, self._batch = None, -1

    def _stop(self) -> None:
        if self._prof is not None:
            self._prof.__exit__(None, None, None)
            syncs = [e for e in self._prof.events() if e.name == SYNC_OP]
            in_optimizer = sum(_inside_optimizer_step(e) for e in syncs)
            self.counts[self._batch] = (len(syncs) - in_optimizer, in_optimizer)
            self._prof = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._stop()
        self._prof, self._batch = profile(activities=[ProfilerActivity.CPU]), batch_idx
        self._prof.__enter__()

    def on_train_epoch_end(self, trainer, module) -> None:
        self._prof.__exit__(None, None, None)  # the last batch ran into the epoch's end: not counted
        self._prof = None


def _inside_optimizer_step(event) -> bool:
    """Adam reads its per-parameter step counters with ``.item()``; torch keeps those counters on the host
    (unless ``capturable``/``fused``), so on a GPU these reads wait for nothing."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("Optimizer.step#"):
            return True
        parent = parent.cpu_parent
    return False


def count_host_syncs(arch: str = "resnet18", width: int = 8, size: int = 32, batch: int = 8,
                     log_every: int = 5, extra: tuple[str, ...] = ()) -> dict[str, int]:
    """Syncs in one CASM step (L100, so pool and current classifier both evaluate) that logs nothing, and
    in one that writes the logs (``trainer.log_every_n_steps``); and, apart, the optimizer's reads of its
    host-side step counters (not device syncs, see :func:`_inside_optimizer_step`)."""
    steps = 2 * log_every + 1
    overrides = [f"model.arch={arch}", f"model.width={width}", f"data.image_size={size}", f"data.batch_size={batch}",
                 f"data.num_train={batch * steps}", f"data.num_val={batch}", "casm.thinning=L100",
                 "casm.snapshot_every=1", "casm.warmup_epochs=0", "trainer.max_epochs=1", "logging.progress_bar=false",
                 "logging.image_every_n_steps=0", "data.num_workers=0", *extra]
    cfg = load_config(None, overrides)
    pl.seed_everything(0, verbose=False)
    datamodule = LocalizationDataModule(cfg.data, cfg.seed)
    module = CASMModule(dict(cfg), datamodule.num_classes)
    plain_step, logging_step = log_every + 1, 2 * log_every - 1  # Lightning logs after steps N-1, 2N-1, ...
    counter = SyncCounter()
    with tempfile.TemporaryDirectory() as folder:  # the pool's snapshots and the logs go there
        trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, default_root_dir=folder,
                             logger=pl.loggers.CSVLogger(folder), log_every_n_steps=log_every,
                             enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                             enable_model_summary=False, callbacks=[counter])
        trainer.fit(module, datamodule=datamodule)
    (step, counters), (logging, _) = counter.counts[plain_step], counter.counts[logging_step]
    return {"step": step, "logging step": logging, "optimizer host counters": counters}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    counts = count_host_syncs(args.arch, args.width, args.size, args.batch)
    print(f"{args.arch} width {args.width}, {args.size} px, batch {args.batch}: {SYNC_OP} calls")
    print(f"  one CASM step (no logging)         {counts['step']:4d}   (the skip decision, the λ_R update)")
    print(f"  one CASM step that writes the logs {counts['logging step']:4d}   (one per logged value)")
    print(f"  Adam's host-side step counters     {counts['optimizer host counters']:4d}   (not device syncs)")

if __name__ == "__main__":
    main()
