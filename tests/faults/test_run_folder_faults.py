"""A run folder is never damaged by a command that is refused: every resume check runs before anything is
written, one process at a time holds a folder, a study's training ends with the study, and resume=last
never goes back in time (docs/configs.md, "When things go wrong")."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from casm.cli import main as cli_main
from casm.config import CONFIG_DIR
from casm.locks import FolderInUseError, FolderLock, lock_holder
from casm.training.run import start_checkpoint
from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[2]


def _fingerprint(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (links as their targets' names) and a digest of its bytes."""
    def content(p: Path) -> str:
        return os.readlink(p) if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()

    return {str(p.relative_to(folder)): content(p) for p in sorted(folder.rglob("*")) if p.is_file() or p.is_symlink()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("runs")
    overrides = TINY + [f"logging.out_dir={out}", "trainer.max_epochs=1", "casm.thinning=L100",
                        "casm.snapshot_every=2", "casm.pool_size=2"]
    assert cli_main(["train", *overrides]) == 0
    return out / "default" / "version_0", overrides


@pytest.mark.parametrize("change, message", [
    ("casm.thinning=F", "casm.thinning=L100"),  # the pool's strategy: refused by restoring it, before
    ("data.synthetic_classes=100", "data.synthetic_classes=10"),  # the class count: a state-dict traceback, before
    ("data.image_size=48", "data.image_size=32"),  # accepted silently before, config.yaml then said 48
    ("data.epoch_images=200", "data.epoch_images=None"),  # the budget of an epoch
    ("data.batch_size=1000", "data.batch_size: 16 -> 1000 would not take effect"),
])
def test_a_refused_resume_leaves_the_run_folder_byte_identical(finished_run, change, message, capsys):
    run, overrides = finished_run
    before = _fingerprint(run)
    for resume in (f"resume={run / 'checkpoints' / 'last.ckpt'}", "resume=last"):
        extra = [] if resume.endswith("last.ckpt") else ["logging.name=default", "logging.version=version_0"]
        assert cli_main(["train", *overrides, "trainer.max_epochs=2", change, resume, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert _fingerprint(run) == before
    assert not list(run.glob("checkpoints/interrupted.ckpt"))


def test_a_training_split_smaller_than_a_batch_is_refused_before_the_folder_is_made(tmp_path, capsys):
    overrides = TINY + [f"logging.out_dir={tmp_path}", "data.num_train=8"]
    assert cli_main(["train", *overrides]) == 2
    assert "fewer than data.batch_size=16" in capsys.readouterr().err
    assert not list(tmp_path.rglob("version_*"))  # the corrected command then starts afresh, as version_0


def test_a_failed_start_writes_no_checkpoint_and_resume_last_takes_the_furthest(finished_run, tmp_path):
    run, _ = finished_run
    last = run / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    copy = tmp_path / "run"
    (copy / "checkpoints").mkdir(parents=True)
    epoch = next(p for p in (run / "checkpoints").glob("epoch*.ckpt"))
    (copy / "checkpoints" / epoch.name).write_bytes(epoch.read_bytes())
    (copy / "checkpoints" / "last.ckpt").symlink_to(epoch.name)
    state["global_step"] = 0  # what a failed start of an older casm left: written later, at an earlier step
    time.sleep(0.01)
    torch.save(state, copy / "checkpoints" / "interrupted.ckpt")
    from casm.config import load_config

    cfg = load_config(None, TINY + ["resume=last"])
    assert Path(start_checkpoint(cfg, copy)).name == "last.ckpt"


def test_two_trainings_of_one_folder_the_second_is_refused_naming_the_first(tmp_path):
    folder = tmp_path / "runs" / "default" / "mine"
    with FolderLock(folder, "training"):
        assert lock_holder(folder) == os.getpid()
        result = subprocess.run([sys.executable, "-m", "casm", "train", *TINY, f"logging.out_dir={tmp_path / 'runs'}",
                                 "logging.version=mine"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2
        assert f"is in use by process {os.getpid()}" in result.stderr and "training refused" in result.stderr
        with pytest.raises(FolderInUseError, match="in use"):
            FolderLock(folder, "evaluation").acquire()  # within one process too: each lock is its own
    assert list(folder.iterdir()) == []  # the refused training wrote nothing
    with FolderLock(folder, "training"):  # released when the holder ends
        pass


def test_an_evaluation_into_a_folder_in_use_is_refused(trained_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    with FolderLock(out, "evaluation"):
        assert cli_main(["evaluate", "--checkpoint", str(trained_checkpoint), f"out_dir={out}", "methods=[casm]",
                         "max_images=8", "--no-progress"]) == 2
    assert "in use by process" in capsys.readouterr().err and not any(out.iterdir())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the child's death signal is Linux's prctl")
def test_kill_9_of_a_study_leaves_no_training_running(tmp_path):
    study = {"name": "tiny", "base": str(CONFIG_DIR / "default.yaml"),
             "overrides": [o for o in TINY if not o.startswith("logging.")] + ["trainer.max_epochs=50"],
             "variants": {"a": []}, "seeds": [0], "out_dir": str(tmp_path / "out"),
             "evaluation": {"judge": False, "overrides": ["methods=[casm]"]}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    runner = subprocess.Popen([sys.executable, "-m", "casm", "experiment", "study", "--config",
                               str(tmp_path / "study.yaml"), "--no-progress"], cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    run = tmp_path / "out" / "tiny" / "runs" / "a" / "seed0"
    deadline = time.time() + 120
    while lock_holder(run) is None and time.time() < deadline:  # the training child holds its run folder
        time.sleep(0.2)
    child = lock_holder(run)
    assert child is not None and child != runner.pid
    with pytest.raises(FolderInUseError, match=f"process {runner.pid}"):  # a second start of the study is refused
        FolderLock(tmp_path / "out" / "tiny", "the study").acquire()
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait(timeout=30)
    deadline = time.time() + 30
    while lock_holder(run) is not None and time.time() < deadline:
        time.sleep(0.2)
    assert lock_holder(run) is None  # the child ended with the study: a rerun does not train beside it
    try:
        os.kill(child, 0)
        alive = Path(f"/proc/{child}/status").read_text().count("zombie") == 0
    except ProcessLookupError:
        alive = False
    assert not alive


def test_a_classifier_trained_alone_says_so_and_its_masker_is_not_used(tmp_path, capsys):
    """casm.warmup_epochs >= trainer.max_epochs trains no masker: the closing line says so, and export and
    an evaluation of casm's masks refuse it (its baselines still evaluate)."""
    overrides = TINY + [f"logging.out_dir={tmp_path}", "trainer.max_epochs=1", "casm.warmup_epochs=1"]
    assert cli_main(["train", *overrides]) == 0
    out = capsys.readouterr().out
    assert "its classifier alone: casm.warmup_epochs=1 >= trainer.max_epochs=1, so no masker was trained" in out
    checkpoint = tmp_path / "default" / "version_0" / "checkpoints" / "last.ckpt"
    assert cli_main(["export", str(checkpoint), str(tmp_path / "e")]) == 2
    assert cli_main(["evaluate", "--checkpoint", str(checkpoint), f"out_dir={tmp_path / 'ev'}", "max_images=8",
                     "methods=[casm]", "--no-progress"]) == 2
    assert capsys.readouterr().err.count("its masker was never trained") == 2
    assert cli_main(["evaluate", "--checkpoint", str(checkpoint), f"out_dir={tmp_path / 'ev'}", "max_images=8",
                     "methods=[gradcam]", "max_images_slow=0", "--no-progress"]) == 0


def test_a_crash_writes_interrupted_ckpt_without_lightnings_weights_only_line(tmp_path, monkeypatch, caplog):
    """After a batch has trained, a crash still writes interrupted.ckpt, and Lightning's "`weights_only` was not
    set" line (about what that file holds) no longer comes before casm's error; a resume then reads it."""
    import logging

    from casm.training.module import CASMModule

    original, calls = CASMModule.training_step, []

    def crash_on_the_third_batch(self, batch, batch_idx):
        calls.append(batch_idx)
        if len(calls) == 3:
            raise RuntimeError("a crash")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(CASMModule, "training_step", crash_on_the_third_batch)
    overrides = TINY + [f"logging.out_dir={tmp_path}", "trainer.max_epochs=1", "logging.version=v"]
    with caplog.at_level(logging.INFO):
        assert cli_main(["train", *overrides]) == 1  # an internal error, as far as casm can tell
    assert not [r for r in caplog.records if "weights_only" in r.getMessage()]
    interrupted = tmp_path / "default" / "v" / "checkpoints" / "interrupted.ckpt"
    assert torch.load(interrupted, weights_only=True)["global_step"] > 0
    monkeypatch.undo()
    assert cli_main(["train", *overrides, "resume=last"]) == 0


def test_a_file_system_without_locks_warns_and_goes_on(tmp_path, monkeypatch):
    import errno

    import casm.locks as locks

    def unsupported(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(locks.fcntl, "flock", unsupported)
    with pytest.warns(UserWarning, match="cannot be locked"):
        with FolderLock(tmp_path / "run", "training"):
            pass
