"""What every multi-run experiment (a study, the unseen-class protocol) shares: a planned training run
with its own folder and resolved config, the guard against continuing a run with another config, and
the launchers that run the trainings.

Each training is an ordinary ``python -m casm train --config RUN.yaml`` process, so DDP, logging,
checkpoints and resume behave exactly as for a run a user starts by hand; an experiment only decides
what to run. A run that ended is marked by ``finished.json`` in its folder and never trained again; an
unfinished one continues from its newest checkpoint (``resume=last``).
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from casm.checkpoints import run_checkpoints, write_text_atomically
from casm.config import RESUME_LAST, ConfigError, EvalConfig, load_config, to_yaml
from casm.models.builders import split_builder
from casm.trained_run import TrainedRun, read_run

Launcher = Callable[[list[str]], int]  # argv after "python -m casm" -> exit code
Log = Callable[[str], None]
Ended = Callable[[str, int, float], None]  # a job ended: its label, exit code and seconds
say = functools.partial(print, flush=True)  # lines must come before the training processes' own output
FINISHED = "finished.json"


def _die_with_parent(parent: int) -> Callable[[], None]:
    """Run in the child before it starts: on Linux the kernel sends it SIGTERM when the experiment's process
    dies, ``kill -9`` included, so no training goes on orphaned beside a rerun of the same experiment."""
    def arm() -> None:
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the parent died before the line above
                os._exit(1)
    return arm


def launch_subprocess(argv: list[str]) -> int:
    """Run ``python -m casm ARGV`` as its own process (what a user would type); it ends with this one."""
    return subprocess.run([sys.executable, "-m", "casm", *argv], preexec_fn=_die_with_parent(os.getpid())).returncode


@dataclass
class PlannedRun:
    label: str  # as the report names it: "C-F", "L100, seed 2", "judge"
    config: DictConfig  # its resolved training config
    run_dir: Path
    config_file: Path
    subsets: list[str] | None = None  # unseen protocol: the subsets it trains on (None: every class)
    tags: dict[str, Any] = field(default_factory=dict)  # study: {"variant": ..., "seed": ...}

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "last.ckpt"

    @property
    def finished(self) -> bool:
        return (self.run_dir / FINISHED).is_file()

    @property
    def status(self) -> str:
        if self.finished:
            return "finished"
        return "resume" if run_checkpoints(self.run_dir) else "new"

    @property
    def trusted_builders(self) -> list[str]:
        """The modules of the outside networks this run's own config names: reading its checkpoint back
        rebuilds them, and the experiment file that planned the run is the user's own."""
        specs = [OmegaConf.select(self.config, key) for key in ("model.classifier.builder",
                                                                 "masker.encoder_model.builder")]
        return [split_builder(spec)[0] for spec in specs if spec]

    def read(self) -> TrainedRun:
        """Its finished checkpoint, read back (:func:`casm.trained_run.read_run`)."""
        return read_run(self.checkpoint, self.trusted_builders)

    def train_argv(self) -> list[str]:
        """A killed run continues from its furthest-trained checkpoint (``interrupted.ckpt`` too, if it got
        further than the last epoch's)."""
        argv = ["train", "--config", str(self.config_file)]
        return argv + ([f"resume={RESUME_LAST}"] if self.status == "resume" else [])


def place(cfg: DictConfig, out_dir: Path, name: str, version: str) -> DictConfig:
    """``cfg`` writing its run to ``out_dir/name/version`` (the name also names it as a judge)."""
    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.logging.out_dir, cfg.logging.name, cfg.logging.version = str(out_dir), name, version
    OmegaConf.set_struct(cfg, True)
    return cfg


def write_config(run: PlannedRun, experiment: str = "the experiment") -> None:
    """Write the run's config, refusing to continue a run that was started with another one. Both are
    compared through the schema, so a key added by a later casm version (at its default) is no change."""
    text = to_yaml(run.config)
    if run.config_file.is_file():
        try:
            started_with = to_yaml(load_config(run.config_file))
        except ConfigError:
            started_with = None
        if started_with != text:
            raise ConfigError(f"{run.run_dir} was started with another config ({run.config_file}); give "
                              f"{experiment} a new name, or delete that run's folder and config to redo it")
    write_text_atomically(run.config_file, text, "run config")


def same_settings(saved: dict | None, wanted: DictConfig) -> bool:
    """Whether an earlier evaluation used ``wanted``'s settings, compared through the schema (as run
    configs are): a key a later casm adds, at its default, is no change."""
    try:
        saved_cfg = load_config(None, [], schema_class=EvalConfig, base=saved or {})
    except ConfigError:
        return False
    return OmegaConf.to_container(saved_cfg, resolve=True) == OmegaConf.to_container(wanted, resolve=True)


def evaluation_done(out_dir: Path, wanted: DictConfig) -> bool:
    """An evaluation whose report exists and was made with ``wanted``'s settings is not made again; an
    unreadable report (empty, cut short, not JSON) counts as missing and is made again."""
    try:
        saved = json.loads((out_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and same_settings(saved.get("eval_config"), wanted)


class LocalLauncher:
    """The default: one training after the other on this machine (each may use all its GPUs)."""

    def __init__(self, launch: Launcher = launch_subprocess) -> None:
        self.launch = launch

    def run(self, jobs: list[tuple[str, list[str]]], log: Log, ended: Ended = lambda *_: None
            ) -> dict[str, tuple[int, float]]:
        """label -> (exit code, seconds) of each job that ran; ``ended`` hears of each job as it ends."""
        done = {}
        for label, argv in jobs:
            start = time.time()
            done[label] = (self.launch(argv), time.time() - start)
            ended(label, *done[label])
            if done[label][0] != 0:
                break  # the rest would meet the same cause; finished runs are kept
        return done


class SubmititLauncher:
    """Every pending training as its own job through submitit (SLURM; its ``local`` cluster runs the
    jobs as processes on this machine), all submitted at once, then waited for. submitit is an
    optional extra: ``pip install casm-saliency[cluster]``."""

    def __init__(self, folder: Path, parameters: dict[str, Any]) -> None:
        try:
            import submitit
        except ImportError as err:
            raise ConfigError("launcher=submitit needs the submitit package: pip install 'casm-saliency[cluster]'"
                              ) from err
        params = dict(parameters)
        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=params.pop("cluster", None))
        try:
            self.executor.update_parameters(**params)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"submitit: {err}") from err

    def run(self, jobs: list[tuple[str, list[str]]], log: Log, ended: Ended = lambda *_: None
            ) -> dict[str, tuple[int, float]]:
        from submitit.helpers import CommandFunction

        start, submitted = time.time(), {}
        for label, argv in jobs:
            submitted[label] = self.executor.submit(CommandFunction([sys.executable, "-m", "casm", *argv]))
            log(f"[{label}] submitted as job {submitted[label].job_id}")
        done = {}
        for label, job in submitted.items():
            try:
                job.result()
                done[label] = (0, time.time() - start)
            except Exception as err:  # a failed job: its log is in the submitit folder
                log(f"[{label}] job {job.job_id} failed: {str(err).splitlines()[0] if str(err) else err!r}")
                done[label] = (1, time.time() - start)
            ended(label, *done[label])
        return done


def train_runs(runs: list[PlannedRun], launcher: LocalLauncher | SubmititLauncher, log: Log = say) -> None:
    """Train every unfinished run; a failure stops the experiment with every finished run kept."""
    pending = []
    for run in runs:
        if run.finished:
            log(f"[{run.label}] finished earlier: skipped")
            continue
        argv = run.train_argv()
        log(f"[{run.label}] {'resuming' if run.status == 'resume' else 'training'}: python -m casm {' '.join(argv)}")
        pending.append((run, argv))
    by_label = {run.label: run for run, _ in pending}

    def mark(label: str, code: int, seconds: float) -> None:  # at once: a killed study keeps what finished
        if code == 0:
            write_text_atomically(by_label[label].run_dir / FINISHED, json.dumps(
                {"seconds": round(seconds, 1), "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}), "run marker")

    done = launcher.run([(run.label, argv) for run, argv in pending], log, mark)
    failed = [f"{label} failed (exit code {code})" for label, (code, _) in done.items() if code != 0]
    if failed:
        raise RuntimeError(f"training {', '.join(failed)}; finished runs are kept: fix the cause and run the same "
                           f"command again to resume")
