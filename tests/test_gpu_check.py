"""The GPU check script runs its whole path on the CPU at toy sizes, so it still works on the day a GPU is lent."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


def test_the_gpu_check_runs_in_its_tiny_cpu_mode(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--tiny", "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out.split("casm GPU check on")[-1].splitlines()
    rows = [line for line in table if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0] for row in rows] == [
        "| train (tiny)", "| CASM step vs plain step", "| evaluate on cpu", "| export + explain on cpu",
        "| ROAD fill on cpu against grad-cam's"]
    assert "CASM/plain" in rows[1] and "8 masks written" in rows[3] and "from grad-cam's (16 px" in rows[4]
