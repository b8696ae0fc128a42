"""A CASM step may ask the device for a value only where it must: the skip decision and the λ_R update.

Each host synchronization (``.item()``, ``bool(tensor)``) stalls a GPU until its queue drains; counted
here on the CPU with the profiler (benchmarks/host_syncs.py), so a new one cannot land unnoticed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "host_syncs.py"


def _benchmark():
    spec = importlib.util.spec_from_file_location("host_syncs", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_a_casm_step_syncs_with_the_host_at_most_three_times(arch):
    counts = _benchmark().count_host_syncs(arch=arch, width=4, size=32, batch=4)
    assert counts["step"] <= 3, counts
    # a logging step adds one read per logged value, and nothing grows with the model's size
    assert counts["logging step"] <= counts["step"] + 16, counts
