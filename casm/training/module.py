"""The CASM LightningModule: a classifier and a masker trained together (docs/training.md).

One step, for a batch (x, y):

1. ``logits_clean, feats = f(x)``; the masker reads ``feats`` detached (shared encoder) or its own.
2. ``mask = masker(x)``, ``x_out = (1 - mask) * x`` (the removed pixels get ``casm.fill``; 0, the mean
   colour, by default) and, when ``casm.lambda_in`` > 0, the masked-in ``x_in = mask * x``.
3. The evaluator is a pool snapshot with probability ``p_pool`` (eval mode, frozen), otherwise the
   current classifier (train mode).
4. Masker loss on ``evaluator(x_out)`` (entropy or classification score, adaptive lambda_R L1), plus
   the optional masked-in cross-entropy on ``evaluator(x_in)`` and total variation (losses.py).
5. Classifier loss: ``CE(clean)``, averaged with ``CE(evaluator(x_out))`` when the evaluator is the
   current classifier (the paper's eq. 8), one SGD step per batch.

All gradients are taken with ``torch.autograd.grad`` *before* any optimizer steps, so every backward
pass sees the parameters its forward pass used (the published code back-propagates through a graph
whose weights an SGD step already changed in place, which modern PyTorch rejects), and the masker's
gradients never land in the classifier's ``.grad``.
"""

from __future__ import annotations

import json
import re
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.func import functional_call
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from torchvision.utils import make_grid

from casm.checkpoints import POOL_FOLDER, write_text_atomically
from casm.config import with_defaults
from casm.data.transforms import denormalize, random_augmentation
from casm.distributed import all_reduce_mean, assert_same_on_all_ranks, empty_on_any_rank
from casm.errors import NonFiniteLossError, TrainingDivergedError, UserError
from casm.fills import keep_masked, remove_masked
from casm.metrics.collapse import HEALTH_FILE, MaskHealth, MaskSpread
from casm.metrics.localization import LocalizationMetric, reference_boxes
from casm.models.modes import evaluation_mode, frozen_batchnorm_statistics
from casm.models.outside import OutsideClassifier
from casm.trained_run import build_models
from casm.training.averaging import MaskerAverage, restore_live_masker
from casm.training.batching import batch_plan, classifier_optimizer
from casm.training.losses import MaskerLoss, masker_loss
from casm.training.pool import ClassifierPool, resolve_strategy
from casm.training.regularization import LambdaController


class CASMModule(pl.LightningModule):
    def __init__(self, config: dict[str, Any], num_classes: int, class_names: list[str] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg = with_defaults(config)  # a checkpoint of an earlier casm lacks the newer keys
        c = self.cfg.casm
        self.classifier, self.masker, output_names = build_models(self.cfg, num_classes, class_names)
        if isinstance(self.classifier, OutsideClassifier):  # scored over all its outputs; data labels mapped
            self.hparams["classifier_class_names"] = output_names
            num_classes = self.classifier.num_classes
        # the masker that is validated, saved and exported; None: the live one (see training/averaging.py)
        self.masker_average = MaskerAverage(self.masker, c.masker_average_steps) if c.masker_average_steps else None
        self._averaged_validation = ExitStack()  # holds the average's weights in the masker during a validation
        self.strategy = resolve_strategy(c.thinning, c.p_pool, c.snapshot_every, c.pool_size)
        self.batch_plan = batch_plan(self.cfg)
        self.pool = ClassifierPool(self.strategy, self.cfg.seed, self.batch_plan.global_batch,
                                   self.batch_plan.reference_batch)
        paper_lambda = self.strategy.lambda_r_entropy if c.score == "E" else self.strategy.lambda_r_classification
        self.lambda_r = LambdaController(
            c.lambda_r if c.lambda_r is not None else paper_lambda,
            target_area=c.target_area if c.lambda_mode == "target_area" else None,
            lr=c.lambda_lr,
        )
        self.automatic_optimization = False
        # the warm-up ends before this epoch: warmup_epochs, or sooner once warmup_accuracy is reached
        self.warmup_end_epoch = c.warmup_epochs
        self.casm_step = 0  # masker steps taken; drives the snapshot schedule
        self.nonfinite_streak = 0
        self.nonfinite_total = 0
        self.epoch_steps = self.epoch_skipped = 0  # steps taken and skipped in this epoch
        self.last_skip_diverged = False  # the latest skip was for a loss above casm.divergence_loss
        self.skipped_images = 0
        self.empty_batches = 0  # steps skipped on every rank because a rank's batch was empty
        self.skipped_val_images = 0  # unreadable validation images of the last validation (data.skip_corrupt)
        self._saved_buffers: list[Tensor] = []
        self.last_mask_area: Tensor | None = None
        self._warned_no_boxes = False
        # (epoch, images of it already trained on) after a mid-epoch resume: the datamodule's sampler skips them
        self.resume_position: tuple[int, int] | None = None

        self.val_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.val_masked_out_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.val_mask_mean = MeanMetric()
        self.val_mask_spread = MaskSpread(self.cfg.data.image_size ** 2)  # validation masks are square
        self.health: dict | None = None  # the newest validation's collapse check (after the warm-up)
        self.health_log: list[dict] = []
        self.val_localization = LocalizationMetric()
        self.val_full_box = LocalizationMetric()
        self.val_centre_box = LocalizationMetric()

    # ---------------------------------------------------------------- set-up
    def configure_optimizers(self):
        o, plan = self.cfg.optim, self.batch_plan
        rank_zero_info(plan.describe(self._trainer.world_size if self._trainer else 1, o))
        opt_c = classifier_optimizer(self.classifier.parameters(), self.cfg)
        opt_m = torch.optim.Adam(self.masker.parameters(), lr=plan.masker_lr, weight_decay=o.masker_weight_decay)
        masker_gamma = o.lr_gamma if o.masker_lr_gamma is None else o.masker_lr_gamma
        schedulers = [torch.optim.lr_scheduler.StepLR(opt_c, o.lr_step_epochs, o.lr_gamma),
                      torch.optim.lr_scheduler.StepLR(opt_m, o.lr_step_epochs, masker_gamma)]
        return [opt_c, opt_m], schedulers

    @property
    def in_warmup(self) -> bool:
        return self.current_epoch < self.warmup_end_epoch

    @property
    def classifier_trains(self) -> bool:
        return self.in_warmup or self.strategy.train_classifier

    def setup(self, stage: str) -> None:
        if stage == "fit":  # before a checkpoint is restored: the pool reads its snapshots from RUN/pool
            self.pool.attach(Path(self.trainer.default_root_dir) / POOL_FOLDER, writes=self.trainer.is_global_zero)

    def on_train_start(self) -> None:
        self.pool.to(self.device)
        if self.masker_average:
            self.masker_average.to(self.device)

    def on_train_epoch_start(self) -> None:
        self.epoch_steps = self.epoch_skipped = 0
        # F: after the warm-up the classifier is frozen: eval mode, no gradients.
        self.classifier.requires_grad_(self.classifier_trains)
        self.classifier.train(self.classifier_trains)

    def on_train_epoch_end(self) -> None:
        with warnings.catch_warnings():  # in the warm-up the masker's optimizer has not stepped yet
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            for scheduler in self.lr_schedulers():
                scheduler.step()
        if self.skipped_images:
            self.log("train/skipped_images", float(self.skipped_images))
        self._check_ranks_agree()

    def _check_ranks_agree(self) -> None:
        """Under DDP, every rank must hold the same weights, pool and lambda_R (cheap checksums)."""
        weights = sum(p.detach().double().sum() for p in self.classifier.parameters())
        weights = weights + sum(p.detach().double().sum() for p in self.masker.parameters())
        assert_same_on_all_ranks(weights, "model weights")
        pool_rng = self.pool.generator.get_state().double().sum().to(self.device)
        assert_same_on_all_ranks(pool_rng, "the pool's random state")
        assert_same_on_all_ranks(torch.tensor(float(len(self.pool)), device=self.device), "the pool size")
        assert_same_on_all_ranks(torch.tensor(self.lambda_r.value, device=self.device), "lambda_R")

    # ---------------------------------------------------------------- training
    def training_step(self, batch: dict, batch_idx: int) -> None:
        self.skipped_images += int(batch["skipped"])
        x, y = batch["image"], self._labels(batch["label"])
        if self._empty_on_any_rank(x):
            return
        self.epoch_steps += 1
        if self.in_warmup:
            self._warmup_step(x, y)
        else:
            self._casm_step(x, y)
        if self.trainer.is_last_batch and self.epoch_skipped == self.epoch_steps:
            self._stop_untrained_epoch()

    def _labels(self, y: Tensor) -> Tensor:
        """The data's labels as the classifier's output indices (they differ for an outside classifier)."""
        return self.classifier.map_labels(y) if isinstance(self.classifier, OutsideClassifier) else y

    def _stop_untrained_epoch(self) -> None:
        """An epoch whose every step was skipped trained nothing; going on would end in 'run saved' with
        an unchanged (or exploded) model, so the run stops here, naming the cause."""
        what = (f"a loss above casm.divergence_loss={self.cfg.casm.divergence_loss:g}" if self.last_skip_diverged
                else "a non-finite loss, gradient or BatchNorm statistic")
        error = TrainingDivergedError if self.last_skip_diverged else NonFiniteLossError
        raise error(f"training stopped: all {self.epoch_steps} steps of epoch {self.current_epoch} were skipped for "
                    f"{what}, so the model did not train. Lower optim.classifier_lr / optim.masker_lr (or check "
                    f"casm.* and the data) and train again")

    def _empty_on_any_rank(self, x: Tensor) -> bool:
        """A batch whose every image was unreadable (``data.skip_corrupt``) has nothing to train on. Under
        DDP the other ranks would wait forever in the gradient all-reduce this rank never joins, so all
        ranks learn of it (one 1-element all-reduce) and skip the step together."""
        if not empty_on_any_rank(x):
            return False
        self.empty_batches += 1
        self.log("train/empty_batches", float(self.empty_batches))
        rank_zero_info(f"casm: a batch was empty on some rank (all its images unreadable) at step {self.global_step}; "
                       f"every rank skips this step")
        return True

    def _batchnorm_buffers(self) -> list[Tensor]:
        """BatchNorm statistics: forward passes change them, so a skipped step must put them back."""
        return [b for m in (self.classifier, self.masker) for b in m.buffers()]

    def _warmup_step(self, x: Tensor, y: Tensor) -> None:
        self._saved_buffers = [b.clone() for b in self._batchnorm_buffers()]
        logits, _ = self.classifier(x)
        loss = F.cross_entropy(logits, y)
        params = [p for p in self.classifier.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params)
        if self._apply_gradients({0: (params, grads)}, [loss.detach()]):
            self.log_dict({"train/classifier_loss": loss.detach(),
                           "train/clean_acc": (logits.argmax(1) == y).float().mean()})

    def _casm_step(self, x: Tensor, y: Tensor) -> None:
        if self.pool.wants_snapshot(self.casm_step):
            self.pool.add(self.classifier, self.casm_step)
        self._saved_buffers = [b.clone() for b in self._batchnorm_buffers()]
        c = self.cfg.casm

        logits_clean, feats = self.classifier(x)  # (B, K), features at 5 scales
        clean_correct = logits_clean.argmax(dim=1) == y
        if c.mask_logit_bound is None:
            mask, mask_logits = self.masker(x, feats), None  # (B, 1, H, W)
        else:
            mask, mask_logits = self.masker.mask_and_logits(x, feats)
        masked = [remove_masked(x, mask, c.fill)] + ([keep_masked(x, mask, c.fill)] if c.lambda_in else [])
        pool_index = self.pool.draw_evaluator()
        logits_masked = self._evaluator_logits(masked, pool_index)
        logits_out = logits_masked[0]

        m_loss = masker_loss(logits_out, y, clean_correct, mask, self.lambda_r.value, c.score,
                             logits_in=logits_masked[-1], lambda_in=c.lambda_in, lambda_tv=c.lambda_tv,
                             area_gate=c.area_gate, mask_logits=mask_logits, logit_bound=c.mask_logit_bound)
        masker_params = [p for p in self.masker.parameters() if p.requires_grad]
        current_evaluates = pool_index is None
        train_classifier = self.strategy.train_classifier
        keep_graph = train_classifier and current_evaluates and c.classifier_on_masked
        grads_m = torch.autograd.grad(m_loss.total, masker_params, retain_graph=keep_graph)
        groups, losses = {1: (masker_params, grads_m)}, [m_loss.total.detach()]
        c_loss = torch.zeros((), device=x.device)
        if train_classifier:
            c_loss = F.cross_entropy(logits_clean, y)
            if current_evaluates and c.classifier_on_masked:  # it also learns from masked-out images (eq. 8)
                c_loss = (c_loss + F.cross_entropy(logits_out, y)) / 2
            classifier_params = [p for p in self.classifier.parameters() if p.requires_grad]
            groups[0] = (classifier_params, torch.autograd.grad(c_loss, classifier_params))
            losses.append(c_loss.detach())

        mean_mask = mask.detach().mean()
        warmup = c.masker_warmup_steps
        lr_scale = {1: min(1.0, (self.casm_step + 1) / warmup)} if warmup else None
        if not self._apply_gradients(groups, losses, clip={1: c.masker_grad_clip}, lr_scale=lr_scale):
            return
        self.lambda_r.update(float(all_reduce_mean([mean_mask])[0]))
        self.casm_step += 1
        if self.masker_average:
            self.masker_average.update(self.masker)
        out_correct = logits_out.detach().argmax(dim=1) == y
        self.log_dict(self._step_scalars(m_loss, c_loss, mean_mask, clean_correct, out_correct, pool_index))
        self.last_mask_area = mean_mask  # the progress bar reads it when it refreshes (console.StepProgressBar)
        every = self.cfg.logging.image_every_n_steps
        if every and self.casm_step % every == 1:
            self._log_images("train/masks", x, mask)

    def _evaluator_logits(self, masked: list[Tensor], pool_index: int | None) -> list[Tensor]:
        """The evaluator's logits on each masked batch: the current classifier (``pool_index`` None; its
        running statistics stay those of clean images, see frozen_batchnorm_statistics) or a pool snapshot
        (eval mode, its weights taking no gradient)."""
        if pool_index is None:
            with frozen_batchnorm_statistics(self.classifier):
                return [self.classifier(images)[0] for images in masked]
        with evaluation_mode(self.classifier):
            snapshot = self.pool.snapshots[pool_index]
            return [functional_call(self.classifier, snapshot, (images,))[0] for images in masked]

    def _step_scalars(self, m_loss: MaskerLoss, c_loss: Tensor, mean_mask: Tensor, clean_correct: Tensor,
                      out_correct: Tensor, pool_index: int | None) -> dict[str, Tensor | float]:
        c = self.cfg.casm
        return {
            "train/masker_loss": m_loss.total.detach(),
            "train/classifier_loss": c_loss.detach(),
            "train/score": m_loss.score,
            **({"train/masked_in_ce": m_loss.masked_in} if c.lambda_in else {}),
            **({"train/mask_tv": m_loss.tv} if c.lambda_tv else {}),
            **({"train/logit_excess": m_loss.logit_excess} if c.mask_logit_bound is not None else {}),
            "train/lambda_r": self.lambda_r.value,
            "train/mask_area": mean_mask,
            "train/confused": m_loss.confused.float().mean(),
            "train/clean_acc": clean_correct.float().mean(),
            "train/masked_out_acc": out_correct.float().mean(),
            "train/pool_size": float(len(self.pool)),
            "train/used_pool": float(pool_index is not None),  # masked-out accuracy differs a lot between the two
        }

    def _apply_gradients(self, groups: dict[int, tuple[list[Tensor], tuple[Tensor, ...]]], losses: list[Tensor],
                         clip: dict[int, float] | None = None, lr_scale: dict[int, float] | None = None) -> bool:
        """Average gradients across ranks, skip the step if any (or a BatchNorm statistic) is non-finite
        or a loss is above ``casm.divergence_loss``, else clip and step.

        ``groups`` maps an optimizer index to its parameters and their gradients. The losses travel in
        the same all-reduce, so every rank reaches the same skip decision."""
        order = sorted(groups)
        # BatchNorm statistics can overflow while loss and gradients stay finite, and exploding weights
        # give huge but finite losses: one flag, inf when either happens, travels in the same all-reduce
        statistics = [b for b in self._batchnorm_buffers() if b.is_floating_point()]
        healthy = torch.stack([torch.isfinite(b).all() for b in statistics]).all()
        bound = self.cfg.casm.divergence_loss
        if bound is not None:
            healthy = healthy & ~(torch.stack([loss.reshape(()) for loss in losses]).abs().max() > bound)
        flag = torch.where(healthy, 0.0, float("inf")).reshape(1).to(losses[0].device)
        flat = [g for i in order for g in groups[i][1]] + [loss.reshape(1) for loss in losses] + [flag]
        reduced = all_reduce_mean(flat)
        # one host synchronization per step: every tensor's finiteness folded into one flag on the device
        if not bool(torch.stack([torch.isfinite(t).all() for t in reduced]).all()):
            reduced_losses = torch.cat(reduced[-len(losses) - 1: -1])
            self._skip_nonfinite(losses, diverging=bool(torch.isfinite(reduced_losses).all()))
            return False
        self.nonfinite_streak = 0
        optimizers = self.optimizers()
        it = iter(reduced)
        for i in order:
            for p in groups[i][0]:
                p.grad = next(it)
            if clip and i in clip:
                self.clip_gradients(optimizers[i], gradient_clip_val=clip[i], gradient_clip_algorithm="norm")
            scale = (lr_scale or {}).get(i, 1.0)
            groups_lr = [g["lr"] for g in optimizers[i].param_groups]
            for g in optimizers[i].param_groups:  # a warm-up on top of the epoch schedule, undone after the step
                g["lr"] *= scale
            optimizers[i].step()
            for g, lr in zip(optimizers[i].param_groups, groups_lr):
                g["lr"] = lr
            optimizers[i].zero_grad(set_to_none=True)
        return True

    def _skip_nonfinite(self, losses: list[Tensor], diverging: bool = False) -> None:
        with torch.no_grad():
            for buffer, saved in zip(self._batchnorm_buffers(), self._saved_buffers):
                buffer.copy_(saved)
        self.nonfinite_streak += 1
        self.nonfinite_total += 1
        self.epoch_skipped += 1
        self.last_skip_diverged = diverging
        self.log("train/nonfinite_steps", float(self.nonfinite_total))
        limit = self.cfg.casm.max_nonfinite_steps
        values = [float(v) for v in losses]
        what = f"a loss above casm.divergence_loss={self.cfg.casm.divergence_loss:g}" if diverging \
            else "non-finite loss, gradient or BatchNorm statistic"
        rank_zero_info(f"casm: {what} at step {self.global_step} (losses {values}); step skipped "
                       f"({self.nonfinite_streak} in a row)")
        if self.nonfinite_streak >= limit and diverging:
            raise TrainingDivergedError(
                f"training diverged: the loss stayed above casm.divergence_loss={self.cfg.casm.divergence_loss:g} "
                f"for {limit} consecutive steps (last losses {values}), so the weights have exploded. They are "
                f"not saved (no interrupted.ckpt); the epoch checkpoints written before are intact. Lower "
                f"optim.classifier_lr / optim.masker_lr and train again.")
        if self.nonfinite_streak >= limit:
            raise NonFiniteLossError(
                f"the loss was NaN/inf for {limit} consecutive steps (last losses {values}); "
                f"training stopped with the weights of the last good step. Lower optim.classifier_lr / "
                f"optim.masker_lr, or check the data; resume from the last checkpoint with resume=PATH.")

    # ---------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        if self.masker_average:  # validate the masker that will be saved and used
            self._averaged_validation.enter_context(self.masker_average.swapped_into(self.masker))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.skipped_val_images += int(batch["skipped"])
        x, y, gt, valid = batch["image"], self._labels(batch["label"]), batch["boxes"], batch["box_valid"]
        if x.numel() == 0:
            return
        logits, feats = self.classifier(x)
        mask = self.masker(x, feats)
        if not bool(torch.isfinite(logits).all() & torch.isfinite(mask).all()):  # one sync per validation batch
            raise TrainingDivergedError(
                f"training diverged: at the validation after epoch {self.current_epoch} the classifier's or the "
                f"masker's outputs are NaN/inf, so their weights have exploded. They are not saved (no "
                f"interrupted.ckpt); the epoch checkpoints written before are intact. Lower optim.classifier_lr / "
                f"optim.masker_lr and train again")
        logits_out, _ = self.classifier(remove_masked(x, mask, self.cfg.casm.fill))
        self.val_accuracy.update(logits, y)
        self.val_masked_out_accuracy.update(logits_out, y)
        self.val_mask_mean.update(mask.mean(dim=(1, 2, 3)))
        self.val_mask_spread.update(mask)
        has_box = valid.any(dim=1)
        if has_box.any():
            gt, valid, correct = gt[has_box], valid[has_box], (logits.argmax(1) == y)[has_box]
            h, w = x.shape[-2:]
            self.val_localization.update(gt, valid, maps=mask[has_box], correct=correct)
            self.val_full_box.update(gt, valid, boxes=reference_boxes("full", len(gt), h, w, x.device), correct=correct)
            self.val_centre_box.update(gt, valid, boxes=reference_boxes("centre", len(gt), h, w, x.device),
                                       correct=correct)
        if batch_idx == 0:
            self._log_images("val/masks", x, mask)

    def on_validation_epoch_end(self) -> None:
        if self.in_warmup and not self.trainer.sanity_checking and self.val_accuracy.update_count:
            self._maybe_end_warmup(float(self.val_accuracy.compute()))
        values = {
            "val/accuracy": self.val_accuracy.compute(),
            "val/masked_out_accuracy": self.val_masked_out_accuracy.compute(),
            "val/mask_mean": self.val_mask_mean.compute(),
        }
        self.log_dict(values, prog_bar=True)
        spread = self.val_mask_spread.compute()
        self.log("val/mask_spread", spread)
        health = MaskHealth(float(values["val/mask_mean"]), float(spread), float(values["val/accuracy"]),
                            float(values["val/masked_out_accuracy"]), lambda_r=self.lambda_r.value,
                            target_area=self.lambda_r.target_area)
        for metric in (self.val_accuracy, self.val_masked_out_accuracy, self.val_mask_mean, self.val_mask_spread):
            metric.reset()
        if self.skipped_val_images:
            self.log("val/skipped_images", float(self.skipped_val_images), reduce_fx="sum", sync_dist=True)
            self.skipped_val_images = 0
        if self.val_localization.total == 0 and not self._warned_no_boxes:
            rank_zero_info("casm: the validation set has no boxes; localization error is not computed")
            self._warned_no_boxes = True
        for name, metric in (("", self.val_localization), ("_full_box", self.val_full_box),
                             ("_centre_box", self.val_centre_box)):
            with warnings.catch_warnings():
                # every rank computes (the sum of boxes is synced inside), also one that saw no box this epoch
                warnings.filterwarnings("ignore", message=r"The ``compute`` method of metric")
                result = metric.compute()
            if metric.total > 0:
                self.log(f"val/le{name}", result["le"], prog_bar=not name)
                self.log(f"val/om{name}", result["om"])
                if name != "_full_box":
                    setattr(health, f"le{name}", float(result["le"]))
            metric.reset()
        if not self.in_warmup and not self.trainer.sanity_checking:  # a warm-up's masker has not trained yet
            self._record_health(health)
        self._averaged_validation.close()  # the live masker trains on

    def _record_health(self, health: MaskHealth) -> None:
        """Whether the masks have collapsed (casm/metrics/collapse.py): logged, kept for the epoch line, and
        written to RUN/health.json after every validation, so a finished or killed run says it."""
        self.health = {"epoch": self.current_epoch, **health.as_dict()}
        reasons = self.health["collapsed"]
        self.log("val/collapsed", float(bool(reasons)))
        self.health_log = [h for h in self.health_log if h["epoch"] < self.current_epoch] + [self.health]
        folder = getattr(self.logger, "log_dir", None)
        if folder and self.trainer.is_global_zero:
            report = json.dumps({"collapsed": reasons, "final": self.health, "epochs": self.health_log}, indent=1)
            write_text_atomically(Path(folder) / HEALTH_FILE, report, "health report")

    def _maybe_end_warmup(self, accuracy: float) -> None:
        """An accuracy warm-up ends after the first epoch whose validation top-1 (reduced over ranks, so
        every rank decides alike) reaches ``casm.warmup_accuracy``; ``casm.warmup_epochs`` caps it."""
        target, epoch = self.cfg.casm.warmup_accuracy, self.current_epoch
        if target is None:
            return
        if accuracy >= target:
            self.warmup_end_epoch = epoch + 1
            rank_zero_info(f"casm: the classifier reached top-1 {accuracy:.3f} >= casm.warmup_accuracy={target} "
                           f"after epoch {epoch}; the masker trains from epoch {epoch + 1}")
        elif epoch + 1 == self.warmup_end_epoch:
            rank_zero_info(f"casm: warm-up cap casm.warmup_epochs={self.warmup_end_epoch} reached with top-1 "
                           f"{accuracy:.3f} < casm.warmup_accuracy={target}; the masker starts anyway")

    # ---------------------------------------------------------------- logging & checkpoints
    def _log_images(self, tag: str, x: Tensor, mask: Tensor, count: int = 8) -> None:
        """Rows of (image, mask, masked-in, masked-out) to TensorBoard."""
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image") or self.global_rank != 0:
            return
        images = denormalize(x[:count].detach())
        m = mask[:count].detach().expand_as(images)
        tiles = torch.stack([images, m, images * m, images * (1 - m)], dim=1).flatten(0, 1)
        experiment.add_image(tag, make_grid(tiles.float().cpu(), nrow=4, padding=1), self.global_step)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["state_dict"]
        broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if broken:  # a checkpoint must be usable: refuse rather than write weights no one can load and run
            raise NonFiniteLossError(f"not writing a checkpoint with non-finite weights ({len(broken)} tensors, "
                                     f"e.g. {broken[:3]}); the checkpoints written before are intact")
        checkpoint["casm_state"] = {
            "pool": self.pool.state_dict(),
            "lambda_r": self.lambda_r.state_dict(),
            "casm_step": self.casm_step,
            "warmup_end_epoch": self.warmup_end_epoch,
            "nonfinite_total": self.nonfinite_total,
            "skipped_images": self.skipped_images,
            "health_log": self.health_log,
            "masker_average": self.masker_average.pack(state) if self.masker_average else {},
        }

    @staticmethod
    def _training_state(checkpoint: dict, source: str) -> dict:
        state = checkpoint.get("casm_state")
        if state is None:
            raise UserError(f"{source}: no CASM training state (pool, lambda_R); was it written by casm?")
        return state

    def check_resumable(self, checkpoint: dict, run_dir: Path, source: str) -> None:
        """What :meth:`on_load_checkpoint` would refuse, asked before a resume writes anything."""
        self.pool.check_resumable(self._training_state(checkpoint, source)["pool"], run_dir / POOL_FOLDER, source)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = self._training_state(checkpoint, self.trainer.ckpt_path or "the checkpoint")
        done = batches_done_mid_epoch(checkpoint)
        self.resume_position = (int(checkpoint["epoch"]), done * self.cfg.data.batch_size) if done else None
        if any(random_augmentation(self.cfg.data)):
            rank_zero_warn("casm: resuming a run with random augmentation (data.random_crop / data.flip): the data "
                           "order, weights, optimizers, pool and lambda_R continue exactly, but the crops and flips "
                           "are drawn afresh, so the continuation is statistically the same as, not bit-identical "
                           "to, an uninterrupted run")
        self.pool.load_state_dict(state["pool"], source=self.trainer.ckpt_path or "the checkpoint")
        self.lambda_r.load_state_dict(state["lambda_r"])
        self.casm_step = int(state["casm_step"])
        self.warmup_end_epoch = int(state.get("warmup_end_epoch", self.warmup_end_epoch))
        self.nonfinite_total = int(state["nonfinite_total"])
        self.skipped_images = int(state["skipped_images"])
        self.health_log = list(state.get("health_log", []))
        self.health = self.health_log[-1] if self.health_log else None
        averaged = state.get("masker_average", {})  # state_dict's masker.* is the average: train on the live one
        if self.masker_average:
            self.masker_average.unpack(checkpoint["state_dict"], averaged)
        else:
            restore_live_masker(checkpoint["state_dict"], averaged)


def batches_done_mid_epoch(checkpoint: dict) -> int:
    """Training batches of its epoch a step checkpoint (``trainer.checkpoint_every_n_steps``) was written
    after; 0 for an end-of-epoch checkpoint."""
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
    return 0 if progress.get("is_last_batch", True) else int(progress.get("current", {}).get("processed", 0))
