"""A plain ``pip install .`` (no extras) runs every subcommand: no module casm imports at run time may
come from a test extra or happen to be installed.

The environment is real: a new venv, casm built as a wheel from this checkout and installed into it by
pip, and pip itself checking that every requirement is met. Its dependencies are the ones already installed here,
linked in one by one, and only those in the closure of casm's declared (non-extra) requirements: so
grad-cam, torchcam, onnx, pytest and whatever else the test environment holds are absent, as on a
user's machine, without downloading PyTorch again."""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from PIL import Image

from tests.conftest import TINY as SUITE_TINY

ROOT = Path(__file__).resolve().parent.parent
TINY = SUITE_TINY + ["trainer.max_epochs=1"]  # one epoch: each subcommand only has to run


def requirement_closure(requirements: list[str]) -> list[metadata.Distribution]:
    """The distributions installed here that ``requirements`` pull in, theirs, and so on, without extras
    (environment markers evaluated for this interpreter)."""
    found: dict[str, metadata.Distribution] = {}
    pending = [Requirement(text) for text in requirements]
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        dist = metadata.distribution(requirement.name)
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key not in found:
            found[key] = dist
            pending += [Requirement(text) for text in dist.requires or []]
    return list(found.values())


def _link_distribution(dist: metadata.Distribution, site: Path) -> None:
    """Link each top-level file or folder of ``dist`` (its packages, modules and dist-info) into ``site``."""
    base = Path(dist.locate_file(""))
    tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
    for top in tops:
        if (base / top).exists() and not (site / top).exists():
            (site / top).symlink_to(base / top)


@pytest.fixture(scope="module")
def plain_python(tmp_path_factory) -> Path:
    env = tmp_path_factory.mktemp("plain") / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    site = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    wheels = tmp_path_factory.mktemp("wheel")  # built here (setuptools is at hand), installed there by pip
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w",
                    str(wheels), str(ROOT)], check=True, capture_output=True)
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    subprocess.run([*pip, "install", "--no-deps", "--quiet", *map(str, wheels.glob("*.whl"))], check=True,
                   capture_output=True)
    declared = subprocess.check_output([python, "-c", "import importlib.metadata as m, json; "
                                        "print(json.dumps(m.requires('casm-saliency')))"], text=True)
    for dist in requirement_closure(json.loads(declared)):  # what this checkout's pyproject.toml declares
        _link_distribution(dist, site)
    check = subprocess.run([*pip, "check"], capture_output=True, text=True)  # every requirement of casm is met
    assert check.returncode == 0, check.stdout + check.stderr
    return python


def _casm(python: Path, *args: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run([str(python), "-m", "casm", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    output = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0, f"casm {args[0]} failed in a plain install:\n{output}"
    return done.stdout


def test_the_plain_environment_lacks_the_test_extras(plain_python):
    probe = "import importlib.util as u; print([m for m in ('pytorch_grad_cam', 'torchcam', 'onnx', 'pytest') " \
            "if u.find_spec(m)])"
    assert subprocess.check_output([str(plain_python), "-c", probe], text=True).strip() == "[]"


@pytest.mark.slow
def test_every_subcommand_runs_in_a_plain_install(plain_python, tmp_path):
    cwd = tmp_path  # not the checkout: casm must come from the installed package
    runs = tmp_path / "runs"
    _casm(plain_python, "split", "--out", str(tmp_path / "split.json"), "data.synthetic_classes=100", cwd=cwd)
    _casm(plain_python, "train", *TINY, f"logging.out_dir={runs}", "logging.version=r", cwd=cwd)
    checkpoint = runs / "default" / "r" / "checkpoints" / "last.ckpt"
    _casm(plain_python, "evaluate", "--checkpoint", str(checkpoint), "--no-progress", "methods=[casm,gradcam]",
          "max_images=16", "max_images_slow=4", "faithfulness_steps=4", cwd=cwd)
    _casm(plain_python, "export", str(checkpoint), str(tmp_path / "export"), cwd=cwd)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    _casm(plain_python, "explain", str(tmp_path / "export"), str(tmp_path / "a.png"), "--out", str(tmp_path / "ex"),
          "--no-progress", cwd=cwd)
    _casm(plain_python, "sanity", "--checkpoint", str(checkpoint), "--images", "4", "--slow-images", "1",
          "--attacks", "T1", "--device", "cpu", cwd=cwd)  # its randomization plot needs matplotlib
    _casm(plain_python, "experiment", "unseen", "--no-progress", *TINY, f"logging.out_dir={runs}",
          "data.synthetic_classes=10", "unseen.proportions=[0.1,0.1,0.2,0.2,0.2,0.2]", "unseen.training_sets=[C-F]",
          "unseen.judge=false", "unseen.scarcity_samples_per_class=null", "unseen.seeds=[0]", "data.epoch_images=64",
          "unseen.eval_overrides=['methods=[casm]','max_images_slow=4','faithfulness_steps=4']", cwd=cwd)
    assert (runs / "unseen" / "report" / "unseen.png").is_file() and (tmp_path / "ex" / "a_mask.png").is_file()
    study = {"name": "s", "overrides": [o for o in TINY if not o.startswith("logging.")], "seeds": [0],
             "variants": {"a": []}, "out_dir": str(runs), "evaluation": {"judge": False}}
    (tmp_path / "study.yaml").write_text(json.dumps(study))  # JSON is YAML
    _casm(plain_python, "experiment", "study", "--config", str(tmp_path / "study.yaml"), "--no-progress", cwd=cwd)
    assert (runs / "s" / "report" / "study.png").is_file()  # the report's plot (matplotlib) and t quantiles (scipy)
