"""The unseen-class protocol end to end (CASM paper 6.4, docs/unseen.md): one split file, one training run
per training set (plus a data-scarcity row and a judge trained on every class), every model evaluated
on every subset, one report.

Each training is an ordinary ``python -m casm train`` process with its own folder and its own
resolved config, so DDP, logging, checkpoints and resume behave exactly as for any run; the runner
only decides what to run. Killed and restarted it skips finished runs (``finished.json`` in the run
folder), resumes an unfinished one from its newest checkpoint (``resume=last``), re-runs only the evaluations whose
report is missing or was made with other settings, and refuses to mix runs made with another config.

Layout under ``OUT/NAME`` (``logging.out_dir`` / ``logging.name``)::

    split.json                  the class split (unless unseen.split_file names one)
    configs/<run>.yaml          each run's resolved training config
    models/<run>/run/           each run (checkpoints, TensorBoard, finished.json),
    models/<run>/run/eval/<S>/  and its evaluation on each subset S (metrics.json, metrics.md, ...)
    report/                     unseen.md, unseen.png, metrics.json, tensorboard/
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from casm.config import CLASS_SELECTION_KEYS, ConfigError, EvalConfig, UnseenConfig, evaluation_data, load_config
from casm.data.datasets import dataset_classes
from casm.data.splits import ClassSplit, make_split
from casm.evaluation import evaluate
from casm.experiments.runs import (
    Launcher,
    LocalLauncher,
    PlannedRun,
    evaluation_done,
    launch_subprocess,
    place,
    say,
    train_runs,
    write_config,
)
from casm.experiments.unseen_report import write_unseen_report
from casm.locks import FolderLock


class UnseenExperiment:
    """Plans and runs the protocol for a training config that carries an ``unseen`` section."""

    def __init__(self, cfg: DictConfig, launch: Launcher = launch_subprocess) -> None:
        for key in CLASS_SELECTION_KEYS:
            if cfg.data[key] is not None:
                raise ConfigError(f"data.{key} is set, but the unseen-class experiment chooses the classes from "
                                  f"its split: drop it (unseen.split_file names an existing split)")
        if cfg.resume:
            raise ConfigError("resume= is not for experiments: run the same command again and it resumes")
        self.cfg, self.launch = cfg, launch
        self.root = Path(cfg.logging.out_dir).resolve() / cfg.logging.name
        u = cfg.unseen
        self.split_path = Path(u.split_file).resolve() if u.split_file else self.root / "split.json"
        self.all_classes = dataset_classes(cfg.data)

    # ------------------------------------------------------------------ plan
    def split(self, write: bool = True) -> ClassSplit:
        """The experiment's split: read and checked against the data, or made (and saved if ``write``)."""
        if self.split_path.is_file():
            split = ClassSplit.load(self.split_path)
            split.check_matches(self.all_classes, self.cfg.data.name)
            return split
        if self.cfg.unseen.split_file:
            raise FileNotFoundError(f"unseen.split_file not found: {self.split_path}")
        u = self.cfg.unseen
        split = make_split(self.all_classes, self.cfg.data.name, u.proportions, u.split_seed)
        if write:
            split.save(self.split_path)
        split.path = self.split_path
        return split

    @property
    def seeds(self) -> list[int]:
        return list(self.cfg.unseen.seeds) if self.cfg.unseen.seeds is not None else [self.cfg.seed]

    def plan(self, split: ClassSplit) -> list[PlannedRun]:
        """Every training set once per seed, seed by seed (the scarcity row with them), then the judge."""
        u = self.cfg.unseen
        rows = [(spec, spec, split.resolve(spec), {}) for spec in u.training_sets]
        if u.scarcity_samples_per_class:
            if not u.scarcity_set:
                raise ConfigError("unseen.scarcity_samples_per_class needs unseen.scarcity_set (e.g. B-F)")
            n = u.scarcity_samples_per_class
            rows.append((f"{u.scarcity_set}, {n} / class", f"{u.scarcity_set}_{n}-per-class",
                         split.resolve(u.scarcity_set), {"data": {"samples_per_class": n}}))
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"unseen.seeds={self.seeds} names a seed twice")
        runs = [self._planned(*row, seed) for seed in self.seeds for row in rows]
        if u.judge:
            epochs = self.cfg.trainer.max_epochs  # every epoch a warm-up epoch: a plain classifier
            runs.append(self._planned("judge", "judge", None, {"casm": {"warmup_epochs": epochs,
                                                                        "warmup_accuracy": None}},
                                      self.seeds[0] + u.judge_seed_offset, one=True))
        for run in runs:
            if run.subsets is not None and len(split.classes_of(run.subsets, self.all_classes)) < 2:
                raise ConfigError(f"training set {run.label} holds one class of {split.path}: a classifier needs "
                                  f"two; give unseen.proportions that leave it more")
        folders = [r.run_dir for r in runs]
        if len(set(folders)) != len(folders):
            raise ConfigError(f"unseen.training_sets names a run twice: {list(u.training_sets)}")
        return runs

    def _planned(self, label: str, folder: str, subsets: list[str] | None, changes: dict, seed: int,
                 one: bool = False) -> PlannedRun:
        """models/<folder>/run (one seed: the layout before seeds existed, so older experiments resume), or
        models/<folder>/seed<k>; the run's logging.name is its folder, which names it as a judge too."""
        cfg = OmegaConf.merge(self.cfg, changes, {"seed": seed})
        OmegaConf.set_struct(cfg, False)
        cfg.unseen = OmegaConf.structured(UnseenConfig)  # the runs do not depend on the protocol's settings
        if subsets is not None:
            cfg.data.split_file, cfg.data.split_subsets = str(self.split_path), list(subsets)
        by_seed = self.cfg.unseen.seeds is not None and not one
        version = f"seed{seed}" if by_seed else "run"
        cfg = place(cfg, self.root / "models", folder, version)
        config_file = self.root / "configs" / (f"{folder}/{version}.yaml" if by_seed else f"{folder}.yaml")
        return PlannedRun(f"{label}, seed {seed}" if by_seed else label, cfg, self.root / "models" / folder / version,
                          config_file, subsets=subsets, tags={"set": label, "seed": seed})

    def describe(self, split: ClassSplit, runs: list[PlannedRun]) -> str:
        """What ``--dry-run`` prints: the split, then each run with its status and command."""
        state = "exists" if self.split_path.is_file() else "would be written"
        sizes = ", ".join(f"{name} {len(classes)}" for name, classes in split.subsets.items())
        lines = [f"split {self.split_path} ({state}): {sizes} of {len(self.all_classes)} classes"]
        for run in runs:
            trained_on = "every class" if run.subsets is None else "+".join(run.subsets)
            lines.append(f"  {run.label:<18} {run.status:<8} trains on {trained_on}; "
                         f"python -m casm {' '.join(run.train_argv())}")
            if run.subsets is not None:
                lines.append(f"  {'':<18} {'':<8} then evaluated on each of {', '.join(split.names)} -> "
                             f"{run.run_dir / 'eval'}")
        lines.append(f"report -> {self.root / 'report'}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ run
    def run(self, progress: bool = True, log: Callable[[str], None] = say) -> Path:
        with FolderLock(self.root, "the experiment"):  # a second start of it is refused, not run beside
            return self._run(progress, log)

    def _run(self, progress: bool, log: Callable[[str], None]) -> Path:
        split = self.split(write=True)
        runs = self.plan(split)
        log(self.describe(split, runs))
        for run in runs:
            write_config(run, "the experiment (logging.name)")
        train_runs(runs, LocalLauncher(self.launch), log)
        judge = next((r for r in runs if r.subsets is None), None)
        for run in runs:
            if run.subsets is not None:
                self._evaluate(run, split, judge, progress, log)
        out = write_unseen_report(self.root / "report", split, [r for r in runs if r.subsets is not None],
                                  self.cfg.data, judge.config.logging.name if judge else None)
        log(f"report written to {out}")
        return out

    def eval_config(self, run: PlannedRun, subset: str, judge: PlannedRun | None) -> DictConfig:
        chosen = {"split_file": str(self.split_path), "split_subsets": [subset]}  # the training's classes dropped
        data = evaluation_data(OmegaConf.to_container(run.config.data, resolve=True), [f"data.{k}=" for k in chosen])
        data.update(chosen)
        overrides = list(self.cfg.unseen.eval_overrides) + [
            f"checkpoint={run.checkpoint}", f"out_dir={run.run_dir / 'eval' / subset}"]
        if judge is not None:
            overrides.append(f"classifiers=[{judge.checkpoint}]")
        cfg = load_config(None, overrides, schema_class=EvalConfig, base={"data": data})
        if "casm" not in cfg.methods:
            raise ConfigError(f"unseen.eval_overrides sets methods={list(cfg.methods)}: the report scores the masker, "
                              f"keep casm among them")
        return cfg

    def _evaluate(self, run: PlannedRun, split: ClassSplit, judge: PlannedRun | None, progress: bool,
                  log: Callable[[str], None]) -> None:
        trained = None
        for subset in split.names:
            cfg = self.eval_config(run, subset, judge)
            if evaluation_done(Path(cfg.out_dir), cfg):
                continue
            trained = trained or run.read()
            log(f"[{run.label}] evaluating on subset {subset} ({'seen' if subset in run.subsets else 'unseen'})")
            evaluate(cfg, progress=progress, trained=trained)
