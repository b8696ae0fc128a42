"""One script for the day a GPU is at hand: does casm train, evaluate, export and explain on it, and
how much does a CASM step cost there? Prints one summary table; about 5-8 minutes on one GPU.

    python benchmarks/gpu_check.py                 # on a CUDA machine
    python benchmarks/gpu_check.py --tiny          # the same path on the CPU at toy sizes (the test suite runs it)

1. a short default-style run (``configs/default.yaml``, 3 epochs: 1 warm-up + 2 CASM) with
   ``trainer.accelerator=gpu``;
2. a CASM step against a plain classifier step of ResNet-50 at 224 px, batch 128, bf16-mixed, in the same
   process (images/s and the ratio; benchmarks/train_step.py);
3. ``casm evaluate`` of that run on CUDA (casm, CAM, Grad-CAM, Grad-CAM++, Score-CAM);
4. ``casm export`` and ``casm explain --device cuda`` on the validation-style images of step 1's data;
5. ROAD's fill at 224 px: the batched conjugate gradients on CUDA against grad-cam's SciPy fill and casm's
   direct one on the CPU (how far apart, ms per image; benchmarks/road.py).

Nothing here is a figure until it has run on a GPU: the CPU mode only keeps the script from rotting.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from casm.cli import main as casm

TINY = ["model.width=4", "masker.hidden=8", "data.image_size=32", "data.num_train=64", "data.num_val=32",
        "data.batch_size=16", "trainer.max_epochs=2", "casm.warmup_epochs=1"]


def _benchmark(name: str):
    """A sibling benchmark script as a module (benchmarks/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_checks(out: Path, tiny: bool) -> list[tuple[str, str, float]]:
    """(check, result, seconds) for each check; raises at the first that fails."""
    accelerator, device = ("cpu", "cpu") if tiny else ("gpu", "cuda")
    rows = []

    def timed(name: str, check) -> None:
        start = time.perf_counter()
        result = check()
        rows.append((name, result, time.perf_counter() - start))

    def train() -> str:
        overrides = (TINY if tiny else ["trainer.max_epochs=3", "casm.warmup_epochs=1"]) + [
            f"trainer.accelerator={accelerator}", f"logging.out_dir={out}", "logging.version=gpu_check",
            "logging.progress_bar=false"]
        assert casm(["train", *overrides]) == 0, "training failed"
        return "ran; see the epoch lines above"

    def step_ratio() -> str:
        bench = _benchmark("train_step")
        argv = (["--arch", "resnet18", "--width", "8", "--size", "32", "--batch", "8", "--steps", "2", "--warmup", "1"]
                if tiny else ["--arch", "resnet50", "--size", "224", "--batch", "128", "--precision", "bf16-mixed",
                              "--device", "gpu"])
        args = bench.build_parser().parse_args(argv)
        plain, step = bench.time_steps(args, casm=False), bench.time_steps(args, casm=True)
        return (f"{args.arch} {args.size} px batch {args.batch} {args.precision}: plain "
                f"{args.batch / plain:.0f} img/s, CASM {args.batch / step:.0f} img/s, CASM/plain {step / plain:.2f}x")

    checkpoint = out / "default" / "gpu_check" / "checkpoints" / "last.ckpt"

    def evaluate() -> str:
        limits = ["max_images=32", "max_images_slow=4", "faithfulness_steps=4"] if tiny else []
        assert casm(["evaluate", "--checkpoint", str(checkpoint), "--no-progress", f"device={device}",
                     f"out_dir={out / 'eval'}", *limits]) == 0, "evaluation failed"
        return f"report in {out / 'eval'}"

    def export_and_explain() -> str:
        assert casm(["export", str(checkpoint), str(out / "export")]) == 0, "export failed"
        images = out / "images"
        images.mkdir(exist_ok=True)
        rng = np.random.default_rng(0)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(images / f"{i}.png")
        assert casm(["explain", str(out / "export"), str(images), "--out", str(out / "explained"), "--device", device,
                     "--no-progress"]) == 0, "explain failed"
        return f"{len(list((out / 'explained').glob('*_mask.png')))} masks written"

    def road_fill() -> str:
        if importlib.util.find_spec("pytorch_grad_cam") is None:
            return "skipped: the reference needs grad-cam (pip install -e '.[test]')"
        road = _benchmark("road")
        size, count = (16, 2) if tiny else (224, 8)
        images = torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(1))
        results = road.compare(images, road.smooth_maps(count, size), device)
        return "; ".join(f"{fill} {ms:.0f} ms/image, {difference:.1e} from grad-cam's"
                         for fill, (difference, ms) in results.items()) + f" ({size} px, 18 levels)"

    timed("train (default config, 3 epochs)" if not tiny else "train (tiny)", train)
    timed("CASM step vs plain step", step_ratio)
    timed(f"evaluate on {device}", evaluate)
    timed(f"export + explain on {device}", export_and_explain)
    timed(f"ROAD fill on {device} against grad-cam's", road_fill)
    return rows


def summary(rows: list[tuple[str, str, float]], machine: str) -> str:
    lines = [f"casm GPU check on {machine}", "", "| check | result | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {result} | {seconds:.1f} |" for name, result, seconds in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU, toy sizes: the path only, no figure")
    parser.add_argument("--out", help="folder for the run and its outputs (default: a temporary one)")
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print("error: no CUDA device here; --tiny runs the same path on the CPU", file=sys.stderr)
        return 2
    machine = "CPU (tiny mode: no figure)" if args.tiny else torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory() as scratch:
        rows = run_checks(Path(args.out or scratch), args.tiny)
    print(summary(rows, machine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
