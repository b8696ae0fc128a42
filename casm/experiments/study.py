"""A study: variants of one training config, each trained on the same seeds, every run evaluated on
the same images with the same judges, and one report of spreads, intervals and paired differences.

A study file names a base training config, overrides for every run, the variants (each a list of
``key=value`` overrides), the seeds and the evaluation (docs/studies.md). Every (variant, seed) is an
ordinary training process in its own folder; a killed study started again skips finished runs,
resumes the unfinished ones and redoes only the evaluations that are missing or were made with other
settings; a run whose config changed is refused rather than mixed in.

Layout under ``OUT/NAME`` (``out_dir`` / ``name`` of the study file)::

    study.yaml                    the resolved study
    configs/<variant>/seed<k>.yaml, configs/judge.yaml
    runs/<variant>/seed<k>/       each run (checkpoints, TensorBoard, health.json, finished.json)
    runs/<variant>/seed<k>/eval/  its evaluation (metrics.json, metrics.md, ...)
    runs/judge/run/               the study's judge: a classifier trained alone, once per study
    report/                       study.md, study.json, study.png, tensorboard/
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from casm.checkpoints import write_text_atomically
from casm.config import CONFIG_DIR, ConfigError, EvalConfig, StudyConfig, load_config
from casm.evaluation import evaluate
from casm.experiments.runs import (
    LocalLauncher,
    Log,
    PlannedRun,
    SubmititLauncher,
    evaluation_done,
    place,
    say,
    train_runs,
    write_config,
)
from casm.experiments.study_report import write_study_report
from casm.locks import FolderLock

JUDGE = "judge"  # the judge's run name, hence its key in the metrics (acc_masked_out@judge)
JUDGE_TOKEN = "@judge"  # in a variant's override value: the judge's checkpoint (e.g. model.pretrained=@judge)
LAUNCHERS = ("local", "submitit")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def load_study(path: str | Path, overrides: list[str] | None = None) -> tuple[DictConfig, Path]:
    """The study file checked against its schema (unknown keys named with the nearest valid ones)."""
    path = Path(path).resolve()
    cfg = load_config(path, overrides, schema_class=StudyConfig)
    for key in ("name", "variants"):
        if OmegaConf.is_missing(cfg, key):
            raise ConfigError(f"{path}: the study needs '{key}'")
    return cfg, path


class Study:
    """Plans and runs a study file's variants x seeds."""

    def __init__(self, cfg: DictConfig, study_file: Path, launcher: LocalLauncher | SubmititLauncher | None = None
                 ) -> None:
        self.cfg, self.source = cfg, str(study_file)
        self.root = Path(cfg.out_dir).resolve() / cfg.name  # like every command's out_dir: relative to the shell
        self.base_file = self._base_file(study_file)
        self._check()
        if launcher is None:
            launcher = (SubmititLauncher(self.root / "submitit", OmegaConf.to_container(cfg.submitit or {}))
                        if cfg.launcher == "submitit" else LocalLauncher())
        self.launcher = launcher

    def _base_file(self, study_file: Path) -> Path:
        if self.cfg.base is None:
            return CONFIG_DIR / "default.yaml"
        path = (study_file.parent / self.cfg.base).resolve()
        if not path.is_file():
            raise ConfigError(f"{self.source}: base={self.cfg.base} not found (looked for {path})")
        return path

    def _check(self) -> None:
        c, where = self.cfg, self.source
        if not c.variants:
            raise ConfigError(f"{where}: variants is empty: name at least one (e.g. baseline: [])")
        for name in c.variants:
            if not _SAFE_NAME.match(name) or name == JUDGE:
                raise ConfigError(f"{where}: variant name {name!r} must be a folder name (letters, digits, _ . + -) "
                                  f"and not '{JUDGE}'")
        if c.reference is not None and c.reference not in c.variants:
            raise ConfigError(f"{where}: reference={c.reference} is not a variant ({', '.join(c.variants)})")
        if not c.seeds or len(set(c.seeds)) != len(c.seeds):
            raise ConfigError(f"{where}: seeds={list(c.seeds)} must list at least one seed, each once")
        if c.launcher not in LAUNCHERS:
            raise ConfigError(f"{where}: launcher={c.launcher!r} is not one of {', '.join(LAUNCHERS)}")
        self.eval_config(None, None)  # its typos too, before anything is trained

    @property
    def reference(self) -> str:
        return self.cfg.reference or next(iter(self.cfg.variants))

    # ------------------------------------------------------------------ plan
    @property
    def judge_checkpoint(self) -> Path:
        return self.root / "runs" / JUDGE / "run" / "checkpoints" / "last.ckpt"

    def _training_config(self, where: str, overrides: list[str]) -> DictConfig:
        common = ["logging.progress_bar=false", *self.cfg.overrides]
        if any(JUDGE_TOKEN in o for o in common + overrides):
            if not where.startswith("variants.") or any(JUDGE_TOKEN in o for o in common):
                raise ConfigError(f"{self.source}: {JUDGE_TOKEN} (the judge's checkpoint) belongs in a variant's "
                                  f"overrides only: the judge cannot start from itself")
            if not self.cfg.evaluation.judge:
                raise ConfigError(f"{self.source}: {where}: {JUDGE_TOKEN} names the study's judge, but "
                                  f"evaluation.judge is false")
            overrides = [o.replace(JUDGE_TOKEN, str(self.judge_checkpoint)) for o in overrides]
        try:
            cfg = load_config(self.base_file, common + overrides)
        except ConfigError as err:
            raise ConfigError(f"{self.source}: {where}: {err}") from err
        if cfg.resume:
            raise ConfigError(f"{self.source}: {where}: resume= is not for studies: run the same command again and "
                              f"it resumes")
        return cfg

    def plan(self) -> list[PlannedRun]:
        """The judge (if any), then every variant for the first seed, then for the next, ..."""
        runs = []
        if self.cfg.evaluation.judge:
            cfg = self._training_config("evaluation.judge_overrides", [
                *self.cfg.evaluation.judge_overrides, f"seed={self.cfg.evaluation.judge_seed}"])
            cfg.casm.warmup_epochs = cfg.trainer.max_epochs  # every epoch a warm-up epoch: a plain classifier
            cfg.casm.warmup_accuracy = None
            runs.append(PlannedRun(JUDGE, place(cfg, self.root / "runs", JUDGE, "run"), self.root / "runs" / JUDGE /
                                   "run", self.root / "configs" / f"{JUDGE}.yaml", tags={"variant": JUDGE}))
        for seed in self.cfg.seeds:  # seed by seed: the first paired comparison is complete early
            for variant, overrides in self.cfg.variants.items():
                cfg = self._training_config(f"variants.{variant}", [*overrides, f"seed={seed}"])
                version = f"seed{seed}"
                runs.append(PlannedRun(f"{variant}, seed {seed}", place(cfg, self.root / "runs", variant, version),
                                       self.root / "runs" / variant / version,
                                       self.root / "configs" / variant / f"{version}.yaml",
                                       tags={"variant": variant, "seed": seed}))
        return runs

    @functools.cached_property
    def _eval_data(self) -> dict:
        """The base config's data (study overrides included), read once: the images every run is scored on."""
        data = OmegaConf.to_container(self._training_config("overrides", []).data, resolve=True)
        return dict(data, samples_per_class=None, epoch_images=None)

    def eval_config(self, run: PlannedRun | None, judge: PlannedRun | None) -> DictConfig:
        """Every run is scored on the base config's validation images (a variant that changes the training
        data is still evaluated on the same images as the others). ``run`` None: the settings alone."""
        overrides = list(self.cfg.evaluation.overrides)
        if run is not None:
            overrides += [f"checkpoint={run.checkpoint}", f"out_dir={run.run_dir / 'eval'}"]
        try:
            cfg = load_config(None, overrides, schema_class=EvalConfig, base={"data": self._eval_data})
        except ConfigError as err:
            raise ConfigError(f"{self.source}: evaluation.overrides: {err}") from err
        if "casm" not in cfg.methods:
            raise ConfigError(f"{self.source}: evaluation.overrides sets methods={list(cfg.methods)}: the report "
                              f"scores the masker, keep casm among them")
        judges = list(self.cfg.evaluation.classifiers) + ([str(judge.checkpoint)] if judge else [])
        cfg.classifiers = list(cfg.classifiers) + [c for c in judges if c not in cfg.classifiers]
        return cfg

    def describe(self, runs: list[PlannedRun]) -> str:
        """What ``--dry-run`` prints: every run with its status and command, then the evaluation and report."""
        c = self.cfg
        lines = [f"study {c.name}: {len(c.variants)} variant(s) x {len(c.seeds)} seed(s) {list(c.seeds)}, "
                 f"base {self.base_file}, reference {self.reference}, launcher {c.launcher}"]
        for run in runs:
            lines.append(f"  {run.label:<24} {run.status:<8} python -m casm {' '.join(run.train_argv())}")
        lines.append(f"then each variant run evaluated ({' '.join(c.evaluation.overrides)}"
                     f"{', judged by ' + JUDGE if c.evaluation.judge else ''}) -> RUN/eval")
        lines.append(f"report -> {self.root / 'report'}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ run
    def run(self, progress: bool = True, log: Log = say) -> Path:
        with FolderLock(self.root, "the study"):  # a second start of the same study is refused, not run beside
            return self._run(progress, log)

    def _run(self, progress: bool, log: Log) -> Path:
        runs = self.plan()
        log(self.describe(runs))
        write_text_atomically(self.root / "study.yaml", OmegaConf.to_yaml(self.cfg, resolve=True), "study config")
        for run in runs:
            write_config(run, f"the study (its name: {self.cfg.name})")
        judge = next((r for r in runs if r.tags["variant"] == JUDGE), None)
        if judge is not None:  # the judge first: a study killed later still has it
            train_runs([judge], self.launcher, log)
        variant_runs = [r for r in runs if r is not judge]
        train_runs(variant_runs, self.launcher, log)
        for run in variant_runs:
            self._evaluate(run, judge, progress, log)
        out = write_study_report(self.root / "report", self.cfg, variant_runs, self.reference, log)
        log(f"report written to {out}")
        return out

    def _evaluate(self, run: PlannedRun, judge: PlannedRun | None, progress: bool, log: Log) -> None:
        cfg = self.eval_config(run, judge)
        if evaluation_done(Path(cfg.out_dir), cfg):
            return
        log(f"[{run.label}] evaluating")
        evaluate(cfg, progress=progress, trained=run.read())
