"""Time a CASM training step against a plain classifier training step, in the same run.

Both go through the same Lightning loop, model, batch and resolution: the plain step is casm's
classifier warm-up step (forward, cross-entropy, backward, SGD), the CASM step is the full step of
docs/training.md (classifier on clean and masked-out images, masker, evaluator from the pool).

    python benchmarks/train_step.py                       # ResNet-18, 64 px, batch 64, CPU
    python benchmarks/train_step.py --arch resnet50 --size 224 --batch 128 --precision bf16-mixed
"""

from __future__ import annotations

import argparse
import tempfile
import time

import pytorch_lightning as pl
import torch

from casm.config import load_config
from casm.data.datamodule import LocalizationDataModule
from casm.training.module import CASMModule


class StepTimer(pl.Callback):
    def __init__(self, skip: int) -> None:
        self.skip, self.times, self._t0 = skip, [], 0.0

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._sync()
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._sync()
        if batch_idx >= self.skip:
            self.times.append(time.perf_counter() - self._t0)


def time_steps(args: argparse.Namespace, casm: bool) -> float:
    """Median seconds per step."""
    overrides = [
        f"model.arch={args.arch}", f"model.width={args.width}", f"data.image_size={args.size}",
        f"data.batch_size={args.batch}", f"data.num_train={args.batch * (args.steps + args.warmup)}",
        f"data.num_val={args.batch}", f"casm.thinning={args.thinning}", f"masker.head={args.head}",
        f"casm.warmup_epochs={0 if casm else 1}", "trainer.max_epochs=1", "trainer.limit_val_batches=0",
        "logging.progress_bar=false", "logging.image_every_n_steps=0", *args.overrides,
    ]
    cfg = load_config(None, overrides)
    pl.seed_everything(0, verbose=False)
    dm = LocalizationDataModule(cfg.data, cfg.seed)
    module = CASMModule(dict(load_config(None, overrides)), dm.num_classes)
    if args.channels_last:
        module = module.to(memory_format=torch.channels_last)
    timer = StepTimer(args.warmup)
    with tempfile.TemporaryDirectory() as folder:  # the pool's snapshots go there, not into the checkout
        trainer = pl.Trainer(max_epochs=1, accelerator=args.device, devices=1, precision=args.precision,
                             logger=False, default_root_dir=folder, enable_checkpointing=False,
                             enable_progress_bar=False, limit_val_batches=0, enable_model_summary=False,
                             callbacks=[timer])
        trainer.fit(module, datamodule=dm)
    return sorted(timer.times)[len(timer.times) // 2]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--thinning", default="L100", help="L100 mixes pool and current evaluators")
    parser.add_argument("--head", default="casme")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("overrides", nargs="*", help="more config overrides, e.g. masker.feature_layer=layer3")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    plain = time_steps(args, casm=False)
    casm = time_steps(args, casm=True)
    print(f"{args.arch} {args.size}px batch {args.batch} {args.device} {args.precision} "
          f"thinning {args.thinning} head {args.head} {' '.join(args.overrides)}")
    print(f"plain classifier step: {plain * 1000:8.1f} ms  {args.batch / plain:8.1f} images/s")
    print(f"CASM step:             {casm * 1000:8.1f} ms  {args.batch / casm:8.1f} images/s")
    print(f"ratio CASM / plain:    {casm / plain:8.2f}x  (target <= 3x)")


if __name__ == "__main__":
    main()
