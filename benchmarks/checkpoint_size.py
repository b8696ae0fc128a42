"""Checkpoint size and save time with a full pool, the pool inside each checkpoint (casm before the pool
moved to RUN/pool) versus the pool written once as safetensors files (now), in the same run.

    python benchmarks/checkpoint_size.py                      # ResNet-50, 1000 classes, a full L1000 pool (30)
    python benchmarks/checkpoint_size.py --arch resnet18 --pool 10

What a run pays: "before", every checkpoint wrote the whole pool again; "after", a checkpoint writes the
models and optimizer states only, and each snapshot is written once, when it is taken.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from casm.checkpoints import read_checkpoint, read_pool, write_atomically
from casm.config import load_config
from casm.training.module import CASMModule


def full_module(arch: str, classes: int, pool: int) -> CASMModule:
    cfg = load_config(None, [f"model.arch={arch}", "model.width=64", "data.synthetic_classes=1000",
                             "casm.thinning=L1000", f"casm.pool_size={pool}", "masker.head=deconv",
                             "optim.classifier_optimizer=sgd"])
    module = CASMModule(dict(cfg), classes)
    module.optimizers_ = [opt for opt in module.configure_optimizers()[0]]
    for opt, params in zip(module.optimizers_, (module.classifier.parameters(), module.masker.parameters())):
        for p in params:  # one step with small gradients: momentum / Adam moments exist, as in a real checkpoint
            p.grad = torch.randn_like(p) * 1e-3
        opt.step()
    return module


def checkpoint_of(module: CASMModule) -> dict:
    checkpoint = {"state_dict": module.state_dict(), "optimizer_states": [o.state_dict() for o in module.optimizers_]}
    module.on_save_checkpoint(checkpoint)
    return checkpoint


def timed_save(checkpoint: dict, path: Path) -> float:
    start = time.perf_counter()
    write_atomically(path, lambda f: torch.save(checkpoint, f))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--pool", type=int, default=30, help="snapshots in the pool (L1000 keeps 30)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    module = full_module(args.arch, args.classes, args.pool)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        inline = module.pool  # not attached to a folder: its state carries the tensors (before)
        for step in range(args.pool):
            inline.add(module.classifier, step * 1000)
        before = checkpoint_of(module)
        before_times = [timed_save(before, run / "before.ckpt") for _ in range(args.repeats)]
        before_size = (run / "before.ckpt").stat().st_size

        module.pool = type(inline)(inline.strategy, 0)
        module.pool.attach(run / "pool", writes=True)
        start = time.perf_counter()
        for step in range(args.pool):
            module.pool.add(module.classifier, step * 1000)
        snapshot_time = (time.perf_counter() - start) / args.pool
        (run / "checkpoints").mkdir()
        after = checkpoint_of(module)
        after_times = [timed_save(after, run / "checkpoints" / "after.ckpt") for _ in range(args.repeats)]
        after_size = (run / "checkpoints" / "after.ckpt").stat().st_size
        snapshot_size = sum(p.stat().st_size for p in (run / "pool").glob("*.safetensors")) / args.pool

        start = time.perf_counter()
        read_checkpoint(run / "before.ckpt")
        before_read = time.perf_counter() - start
        start = time.perf_counter()
        read_checkpoint(run / "checkpoints" / "after.ckpt")
        read_pool(run / "checkpoints" / "after.ckpt")
        after_read = time.perf_counter() - start

    mb = 1e6
    b, a = min(before_times), min(after_times)
    print(f"{args.arch}, {args.classes} classes, a full pool of {args.pool} snapshots "
          f"({snapshot_size / mb:.0f} MB each)")
    print(f"{'':28s}{'before (pool inline)':>22s}{'after (pool on disk)':>22s}{'ratio':>8s}")
    ratio = before_size / after_size
    print(f"{'checkpoint size':28s}{before_size / mb:>19.0f} MB{after_size / mb:>19.0f} MB{ratio:>7.1f}x")
    print(f"{'checkpoint save (best of ' + str(args.repeats) + ')':28s}{b:>20.2f} s{a:>20.2f} s{b / a:>7.1f}x")
    print(f"{'one snapshot, written once':28s}{'-':>22s}{snapshot_time:>20.2f} s")
    print(f"{'resume read (ckpt + pool)':28s}{before_read:>20.2f} s{after_read:>20.2f} s")


if __name__ == "__main__":
    main()
