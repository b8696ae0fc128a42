"""The layers of docs/architecture.md hold: no module imports a layer above its own (read from the source,
module-level and function-level imports alike), and reading or exporting a trained run needs no Lightning."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

CASM = Path(__file__).resolve().parent.parent / "casm"
LAYERS = [  # bottom up; a module may import its own layer and those below
    {"errors", "config", "checkpoints", "distributed", "locks"},
    {"data", "models", "metrics", "fills"},
    {"baselines", "trained_run", "training"},
    {"evaluation", "export", "sanity"},
    {"experiments"},
    {"cli", "__main__", "__init__"},
]
LEVEL = {part: i for i, layer in enumerate(LAYERS) for part in layer}
# asked while a config is checked, from the layer above on purpose (config.py says why)
ALLOWED = {("config", "models"), ("config", "data")}


def _part(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("casm."):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("casm."))
    return names


MODULES = sorted(p for p in CASM.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(CASM)))
def test_no_module_imports_a_layer_above_its_own(path):
    own = _part("casm." + ".".join(path.relative_to(CASM).with_suffix("").parts))
    if own == "__init__" and path.parent != CASM:
        own = path.parent.name
    for imported in _imports(path):
        other = _part(imported)
        if other not in LEVEL or (own, other) in ALLOWED:
            continue
        assert LEVEL[other] <= LEVEL[own], f"{path.relative_to(CASM)} ({own}) imports {imported}, a layer above"
    # (training and trained_run share a layer: training builds its networks with trained_run.build_models)


def test_the_layer_table_names_every_package():
    parts = {p.stem if p.parent == CASM else p.relative_to(CASM).parts[0] for p in MODULES}
    assert parts - {"configs"} <= set(LEVEL), sorted(parts - set(LEVEL))


def test_the_readers_of_a_run_never_import_the_training_layer():
    for package in ("evaluation", "export", "sanity"):
        for path in (CASM / package).rglob("*.py"):
            assert not any(_part(m) == "training" for m in _imports(path)), path


def test_exporting_a_trained_run_imports_no_lightning(trained_checkpoint):
    code = ("import sys; from casm.export import masker_from_checkpoint; "
            f"masker_from_checkpoint({str(trained_checkpoint)!r}); "
            "assert 'pytorch_lightning' not in sys.modules, 'Lightning was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
