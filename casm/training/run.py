"""Build data, model, logger and trainer from a config, and fit."""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from contextlib import nullcontext
from dataclasses import fields
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, OnExceptionCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_info

from casm.checkpoints import (
    POOL_FOLDER,
    read_checkpoint,
    run_checkpoints,
    run_folder,
    stale_partials,
    write_text_atomically,
)
from casm.config import RESUME_LAST, ConfigError, DataConfig, config_changes, to_yaml, with_defaults
from casm.data.datamodule import LocalizationDataModule
from casm.errors import TrainingDivergedError, UserError, shorten
from casm.locks import FolderLock, is_first_process
from casm.training.checkpoint_io import AtomicCheckpointIO, RunCheckpoint
from casm.training.console import EpochSummary, StepProgressBar
from casm.training.lficam_module import LFICAMModule
from casm.training.module import CASMModule
from casm.training.timing import EpochTimer

# data keys a resume may change: where the same images live and how they are read (a cluster job copies
# the data set to its node's scratch disk); every other data key changes what the run is trained on
RESUME_DATA_FREE = ("data.root", "data.boxes_file", "data.num_workers", "data.pin_memory", "data.skip_corrupt")
# what a checkpoint's state only fits, or what would change the run's meaning half-way: the networks, the
# optimizer whose state it holds, the pool's thinning, and the data (its images, classes, size and budget)
RESUME_FIXED_KEYS = ("mode", "model.arch", "model.width", "model.manipulation", "model.classifier.builder",
                     "model.classifier.kwargs", "masker.head", "masker.encoder", "masker.hidden",
                     "masker.feature_layer", "masker.encoder_model.builder", "masker.encoder_model.kwargs",
                     "masker.encoder_model.layers", "optim.classifier_optimizer", "casm.thinning") + tuple(
    f"data.{f.name}" for f in fields(DataConfig) if f"data.{f.name}" not in RESUME_DATA_FREE + ("data.batch_size",))
# what a resume takes from the checkpoint's state, not from the config: the optimizers' and schedulers'
# settings (learning rates, their scaling, momentum, decay, steps), lambda_R, and the global batch the
# learning rates and the mid-epoch data position were set for; a changed value would be ignored silently
RESUME_STATE_KEYS = ("optim.", "casm.lambda_r", "data.batch_size")
_VERSION_ENV = "CASM_RUN_VERSION"  # shared by DDP ranks, which Lightning starts as new processes


class _DropLines(logging.Filter):
    """Drop Lightning console lines that mislead between a run's own: tips for its cloud services (casm
    runs offline), and, before casm's own error, that a checkpoint's ``weights_only`` "was not set" (it
    is about what ``interrupted.ckpt`` holds -- everything, as casm wants -- not about reading files)."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_DropLines("💡 Tip"))
logging.getLogger("pytorch_lightning.trainer.connectors.checkpoint_connector").addFilter(
    _DropLines("`weights_only` was not set"))


def _all_or(limit: int | float) -> int | float | None:
    """Lightning's ``limit_*_batches``, None for all of them: an explicit 1.0 makes Lightning print that
    1.0 means 100 % (an explicit int 1, "1 batch", keeps its line: that one is worth reading)."""
    return None if isinstance(limit, float) and limit == 1.0 else limit


def check_resume_compatible(cfg: DictConfig, checkpoint: dict, path: str) -> list[str]:
    """Refuse, with the fix, to resume a checkpoint into another architecture or optimizer, or with a
    setting that the checkpoint's state would override; returns the changes that do take effect
    (``key: old -> new``, for :func:`describe_resume`)."""
    saved = checkpoint.get("hyper_parameters", {}).get("config", {})
    if not saved:
        raise UserError(f"{path}: not a casm training checkpoint (no saved config)")
    saved = with_defaults(saved)  # a checkpoint of an earlier casm lacks the newer keys: their defaults
    for key in RESUME_FIXED_KEYS:
        old, new = OmegaConf.select(saved, key), OmegaConf.select(cfg, key)
        if old != new:
            raise ConfigError(f"{path} was trained with {key}={old}, this run has {key}={new}; "
                              f"drop the override or add {key}={old}")
    changes = config_changes(saved, cfg, ignore=("resume",))
    ignored = [c for c in changes if c.startswith(RESUME_STATE_KEYS)]
    if ignored:
        raise ConfigError(f"{path}: {'; '.join(ignored)} would not take effect: a resume continues the "
                          f"checkpoint's optimizers, schedulers and lambda_R, set for the old value; drop the "
                          f"override, or start a new run")
    return changes


def check_resume_loads(module: pl.LightningModule, checkpoint: dict, path: str, run_dir: Path) -> None:
    """Everything restoring ``checkpoint`` into ``module`` could refuse (its weights' names and shapes, its
    training state, its pool's snapshots), asked before anything in the run folder is written: a refused
    resume leaves the folder as it was."""
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, KeyError) as err:
        raise UserError(f"{path}: its weights do not fit this run's networks ({shorten(err)}); resume with the "
                        f"settings it was trained with") from err
    check = getattr(module, "check_resumable", None)
    if check is not None:
        check(checkpoint, run_dir, path)


def describe_resume(path: str, checkpoint: dict, changes: list[str]) -> str:
    """One line: where the run continues from, and every setting that differs from the config it was
    trained with so far (a changed override on the command line is then never a surprise)."""
    where = f"resuming {path} (saved at step {checkpoint.get('global_step', 0)})"
    return f"{where} with {'these changes: ' + '; '.join(changes) if changes else 'its config unchanged'}"


def _run_dir(cfg: DictConfig) -> tuple[str, str, str]:
    """(save_dir, name, version): runs/NAME/VERSION. A resumed run keeps logging next to its checkpoint."""
    if cfg.resume and cfg.resume != RESUME_LAST:
        run = run_folder(cfg.resume)  # OUT/NAME/VERSION
        return str(run.parent.parent), run.parent.name, run.name
    is_child_rank = os.environ.get("LOCAL_RANK", "0") != "0"  # Lightning starts ranks > 0 as new processes
    version = cfg.logging.version or (os.environ.get(_VERSION_ENV) if is_child_rank else None)
    if version is None and _launched_by_cluster():  # torchrun / srun start every rank: each must find the same
        version = f"job_{os.environ.get('SLURM_JOB_ID') or os.environ['TORCHELASTIC_RUN_ID']}"
    if version is None:
        if cfg.resume == RESUME_LAST:
            raise ConfigError("resume=last continues the run in a folder with a fixed name, and this run would get "
                              "the next free version_N: add logging.version=NAME (torchrun and SLURM jobs are named "
                              "after their job id already)")
        base = Path(cfg.logging.out_dir) / cfg.logging.name
        taken = [int(p.name.split("_")[1]) for p in base.glob("version_*") if p.name.split("_")[1].isdigit()]
        version = f"version_{max(taken, default=-1) + 1}"
        os.environ[_VERSION_ENV] = version
    return cfg.logging.out_dir, cfg.logging.name, version


def start_checkpoint(cfg: DictConfig, run_dir: Path) -> str | None:
    """The checkpoint this run continues from, or None for a fresh start.

    ``resume=PATH`` is PATH; ``resume=last`` the newest checkpoint of ``run_dir`` (none: a fresh start,
    so one command serves a job's first start and its requeue). A requeued SLURM job
    (``SLURM_RESTART_COUNT`` > 0) is the same run by definition and continues as with ``resume=last``.
    Otherwise a folder that already holds checkpoints is refused: Lightning would continue from them
    silently, under this run's config and without the compatibility check.
    """
    existing = run_checkpoints(run_dir)
    # last.ckpt links to the newest epoch file; on that tie take the link (Lightning then keeps its name)
    newest = max(existing, key=lambda p: (p.stat().st_mtime_ns, p.name in ("last.ckpt", "interrupted.ckpt")),
                 default=None)
    requeued = int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0
    if cfg.resume == RESUME_LAST or (not cfg.resume and requeued):
        # the furthest-trained checkpoint: an interrupted.ckpt written later than last.ckpt but at an earlier
        # step (a crash right after a start from an older file) is never preferred
        furthest = max(existing, key=lambda p: (_saved_step(p), p == newest, p.name == "last.ckpt"), default=None)
        return str(furthest) if furthest else None
    if not cfg.resume and newest:
        raise ConfigError(f"{run_dir} already holds checkpoints of an earlier run "
                          f"({', '.join(sorted(p.name for p in existing))}): resume=last continues it; another "
                          f"logging.version, logging.name or logging.out_dir starts a new run")
    return cfg.resume


def _saved_step(path: Path) -> int:
    """The global step a checkpoint was written at (memory-mapped: its tensors are not read); -1 if unreadable."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("global_step", -1))
    except Exception:  # a file casm did not write: the newest readable one is taken instead
        return -1


def _launched_by_cluster() -> bool:
    """Several processes started by torchrun or SLURM (not by Lightning): they cannot pass a folder name
    to each other, so the run folder is named after the job they share."""
    processes = int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1)
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID", "none")
    return processes > 1 and job != "none"


class SaneExceptionCheckpoint(OnExceptionCheckpoint):
    """``interrupted.ckpt`` on a crash or Ctrl-C, but only of weights this process trained: not after
    divergence (those weights have exploded, and a checkpoint that cannot be used is worse than none), and
    not before the first batch (a failed start would otherwise leave an untrained checkpoint that
    ``resume=last`` takes for the newest)."""

    started_at: int | None = None  # training batches completed when this process started training

    @staticmethod
    def _batches(trainer: pl.Trainer) -> int:
        return trainer.fit_loop.epoch_loop.batch_progress.total.completed

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started_at = self._batches(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        trained = self.started_at is not None and self._batches(trainer) > self.started_at
        if trained and not isinstance(exception, TrainingDivergedError):
            super().on_exception(trainer, pl_module, exception)


def validation_batches(cfg: DictConfig) -> int | float:
    """Lightning's ``limit_val_batches`` (per process) for ``trainer.max_val_images``: each step of every
    process together reads one global batch, so N images are ceil(N / data.batch_size) steps."""
    cap = cfg.trainer.max_val_images
    return cfg.trainer.limit_val_batches if cap is None else math.ceil(cap / cfg.data.batch_size)


def build_trainer(cfg: DictConfig, run_dir: Path, logger: TensorBoardLogger | bool) -> pl.Trainer:
    t = cfg.trainer
    ckpt_dir = run_dir / "checkpoints"
    timer = EpochTimer()
    callbacks = [
        # the newest epoch only (a checkpoint holds the whole classifier pool, tens of MB per snapshot);
        # last.ckpt links to it
        # save_on_train_epoch_end: else, with check_val_every_n_epoch > 1, Lightning saves only after
        # validation and an epoch without one (the last, say) is never checkpointed
        RunCheckpoint("epoch", 3, dirpath=ckpt_dir, save_last="link", save_top_k=1, every_n_epochs=1,
                      save_on_train_epoch_end=True),
        SaneExceptionCheckpoint(dirpath=ckpt_dir, filename="interrupted"),
        LearningRateMonitor(logging_interval="epoch"),
        timer,
        EpochSummary(timer),  # after the timer: it prints this epoch's time
    ]
    if t.checkpoint_every_n_steps:
        # the newest keep_step_checkpoints: "step" is a monitor Lightning always provides
        callbacks.append(RunCheckpoint("step", 7, dirpath=ckpt_dir, every_n_train_steps=t.checkpoint_every_n_steps,
                                       save_top_k=t.keep_step_checkpoints, monitor="step", mode="max"))
    if cfg.logging.progress_bar:
        callbacks.append(StepProgressBar(refresh_rate=10))
    return pl.Trainer(
        default_root_dir=str(run_dir),
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        limit_train_batches=_all_or(t.limit_train_batches),
        limit_val_batches=_all_or(validation_batches(cfg)),
        check_val_every_n_epoch=t.check_val_every_n_epoch,
        log_every_n_steps=t.log_every_n_steps,
        logger=logger,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],  # a checkpoint appears complete or not at all
        enable_progress_bar=cfg.logging.progress_bar,
        deterministic=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # casm's samplers split the data across ranks (see EpochShuffleSampler)
    )


def train(cfg: DictConfig) -> Path:
    """Train CASM with ``cfg``; returns the run directory (config.yaml, TensorBoard logs, checkpoints).

    The first process holds the run folder's lock throughout (:mod:`casm.locks`), and every check of a
    resume runs before the folder is written to."""
    save_dir, name, version = _run_dir(cfg)
    run_dir = Path(save_dir) / name / version
    if cfg.resume and cfg.resume != RESUME_LAST and not Path(cfg.resume).is_file():
        raise FileNotFoundError(f"resume={cfg.resume}: checkpoint not found")
    with FolderLock(run_dir, "training") if is_first_process() else nullcontext():
        return _fit(cfg, run_dir)


def _fit(cfg: DictConfig, run_dir: Path) -> Path:
    resume = start_checkpoint(cfg, run_dir)
    checkpoint = read_checkpoint(resume) if resume else None
    changes = check_resume_compatible(cfg, checkpoint, resume) if resume else []
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = LocalizationDataModule(cfg.data, cfg.seed)
    datamodule.check_training_split()
    module_class = LFICAMModule if cfg.mode == "lficam" else CASMModule
    module = module_class(OmegaConf.to_container(cfg, resolve=True), datamodule.num_classes, datamodule.classes)
    note = None
    if resume:
        check_resume_loads(module, checkpoint, resume, run_dir)
        note = describe_resume(resume, checkpoint, changes)
    del checkpoint  # Lightning reads the file again: its weights are not held twice
    logger = TensorBoardLogger(str(run_dir.parent.parent), name=run_dir.parent.name, version=run_dir.name,
                               default_hp_metric=False)
    trainer = build_trainer(cfg, run_dir, logger)
    if trainer.is_global_zero:
        write_text_atomically(run_dir / "config.yaml", to_yaml(cfg), "run config")
        if note:  # config.yaml now holds this config; the log keeps what each resume changed
            rank_zero_info(f"casm: {note}")
            with open(run_dir / "resumes.log", "a") as log:
                log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {note}\n")
        for stale in stale_partials(run_dir / "checkpoints") + stale_partials(run_dir / POOL_FOLDER):
            rank_zero_info(f"casm: removing {stale}, a file whose write was interrupted")
            stale.unlink()
    with warnings.catch_warnings():
        # Lightning warns that a mid-epoch resume "can cause unreliable results" because it restarts the
        # DataLoader at batch 0; casm's sampler skips the batches already trained on (exact resume, tested)
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
        # and for step checkpoints under manual optimization it suggests keeping a copy of the weights before
        # every step: casm saves the state after the step on purpose (resume continues from it exactly)
        warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
        # and, as casm chose the start above, that a fresh start found no checkpoint to continue from
        warnings.filterwarnings("ignore", message=r"`\.fit\(ckpt_path=None\)` was called without a model")
        warnings.filterwarnings("ignore", message=r'\.fit\(ckpt_path="last"\) is set, but there is no last')
        # and Lightning's own pytree helper still builds torch's deprecated LeafSpec (nothing casm can change)
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
        # weights_only: a checkpoint is read as casm reads every file, without unpickling code
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    return run_dir
