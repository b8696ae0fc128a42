"""The evaluation harness: every method's maps on the same images, every metric (docs/evaluation.md), one report.

Methods are the trained masker ("casm"), the CAM baselines on the masker's own classifier (and on
any ``baseline_classifiers``), and two toy references ("full image", "centre box"). Each produces a
(B, H, W) map in [0, 1] per batch; every metric then sees exactly the same images.
"""

from __future__ import annotations

import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torchmetrics import MeanMetric
from tqdm.auto import tqdm

from casm.baselines import BASELINES, PERTURBATION_METHODS, SaliencyMethod
from casm.baselines.base import logits_of
from casm.checkpoints import run_folder
from casm.config import ConfigError
from casm.data.datamodule import LocalizationDataModule
from casm.data.transforms import normalize_images
from casm.distributed import gather_objects, launched_processes, rank, sum_over_ranks, world_size
from casm.errors import UserError
from casm.evaluation.loaders import KnownClasses, load_classifier, load_foreign_judge, load_lficam
from casm.evaluation.report import write_reports
from casm.evaluation.scores import REFERENCES, MethodScores, reference_map
from casm.fills import FILLS
from casm.locks import FolderLock
from casm.metrics.collapse import read_collapse
from casm.metrics.faithfulness import (
    average_drop_increase,
    deletion_insertion,
    energy_pointing_game,
    judge_hits,
    masked_variants,
    pointing_game,
)
from casm.metrics.localization import (
    binarize,
    reference_boxes,
)
from casm.metrics.road import road_scores
from casm.trained_run import TrainedRun, read_run

MapFn = Callable[[Tensor, dict, Tensor], Tensor]  # (images, features, logits) -> (B, H, W)


class Evaluator:
    """Builds the methods, runs them over the validation split, accumulates :class:`MethodScores`."""

    def __init__(self, cfg: DictConfig, run: TrainedRun, device: torch.device, data_classes: list[str]) -> None:
        if "casm" in cfg.methods:
            run.require_trained_masker("be evaluated (methods without casm evaluate its classifier's baselines)")
        self.cfg, self.trained, self.device = cfg, run.to(device), device
        self.classifier = run.classifier
        self.data_classes = list(data_classes)

        def match(model, classes, who):
            return KnownClasses.match(model, classes, self.data_classes, who).to(device)

        def judge(model, classes, who):  # a judge scores images of the classes it knows: it must know one
            known = match(model, classes, who)
            if known.known_count == 0:
                raise UserError(f"{who} shares no class with the evaluated data, so every judged column would read "
                                f"0 %: it knows {_listed(classes)}, the data has {_listed(self.data_classes)}; "
                                f"judge with a classifier trained on these classes")
            return known

        self.own = match(self.classifier, run.class_names, "the checkpoint's classifier")
        self.judges: dict[str, KnownClasses] = {"own": self.own}
        for path in cfg.classifiers:
            name, model, classes = load_classifier(path, set(self.judges))
            self.judges[name] = judge(model, classes, path)
        for index, spec in enumerate(cfg.judges):
            name, model, classes = load_foreign_judge(spec, index, cfg.data.image_size, set(self.judges))
            self.judges[name] = judge(model, classes, f"judges[{index}] ({spec.builder})")
        self.baseline_models: dict[str, KnownClasses] = {"": self.own}
        for path in cfg.baseline_classifiers:
            name, model, classes = load_classifier(path, {n.lstrip("@") for n in self.baseline_models})
            self.baseline_models[f"@{name}"] = match(model, classes, path)
        if (cfg.fill or "mean") not in FILLS:
            raise ConfigError(f"fill={cfg.fill!r} is not one of {', '.join(FILLS)}")
        unknown = [m for m in cfg.methods if m != "casm" and m not in BASELINES]
        if unknown:
            raise UserError(f"methods: unknown {unknown}; choose from casm, {', '.join(BASELINES)} "
                            f"(and lficam_checkpoint=PATH for LFI-CAM)")
        self.lficam = match(*load_lficam(cfg.lficam_checkpoint), cfg.lficam_checkpoint) if cfg.lficam_checkpoint \
            else None
        self.judge_accuracy = {name: MeanMetric() for name in self.judges}  # clean top-1, method-independent
        self.lficam_accuracy = MeanMetric()
        self.clean_top1: dict[str, float] = {}  # the two above, over all ranks (set by run)
        self.lficam_top1 = float("nan")
        self.scores: dict[str, MethodScores] = {}
        self.skipped_images = 0  # unreadable images left out (data.skip_corrupt)
        # the figure: images picked across classes (dataset index -> image, boxes, and each method's map)
        self.figure_rows: set[int] = set()
        self._figure_samples: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
        self._figure_maps: dict[str, dict[int, Tensor]] = {}
        self.figure_images: Tensor | None = None
        self.figure_boxes: list[tuple[Tensor, Tensor]] = []
        self.figure_maps: dict[str, list[Tensor | None]] = {}

    @property
    def partial_judges(self) -> dict[str, str]:
        """Judges that know only some of the evaluated classes, and how many: "3/10 classes"."""
        total = len(self.data_classes)
        return {name: f"{judge.known_count}/{total} classes" for name, judge in self.judges.items()
                if name != "own" and judge.known_count < total}

    def _scores(self, name: str) -> MethodScores:
        if name not in self.scores:
            self.scores[name] = MethodScores(self.cfg.binarization, self.cfg.alpha, self.cfg.sweep_thresholds,
                                             self.cfg.wsol_thresholds)
        return self.scores[name]

    def run(self, loader, progress: bool = True) -> dict[str, dict[str, float]]:
        """Every method over ``loader``'s images (this process's shard under torchrun: ``batch["index"]``
        are dataset positions); returns each method's metrics over all ranks."""
        cfg = self.cfg
        with ExitStack() as stack:
            baselines: dict[str, SaliencyMethod] = {}
            for suffix, known in self.baseline_models.items():
                for name in cfg.methods:
                    if name == "casm":
                        continue
                    kwargs = {"chunk_size": cfg.chunk_size} if name in PERTURBATION_METHODS else {}
                    if name == "rise":
                        kwargs["num_masks"] = cfg.rise_masks
                    method = BASELINES[name](known.model, cfg.target_layer, **kwargs)
                    baselines[name + suffix] = stack.enter_context(method)
            total = len(loader.dataset) if cfg.max_images is None else min(cfg.max_images, len(loader.dataset))
            labels = getattr(loader.dataset, "labels", None)
            self.figure_rows = set(figure_picks(labels[:total] if labels else list(range(total)), cfg.figure_images))
            mine = len(range(rank(), total, world_size()))  # this rank's share (ShardSampler)
            bar = tqdm(total=mine, unit="img", disable=not progress or rank() > 0,
                       desc="evaluating" + (f" (rank 0 of {world_size()})" if world_size() > 1 else ""))
            for batch in loader:
                self.skipped_images += int(batch["skipped"])
                keep = batch["index"] < total
                if not keep.any():
                    if len(keep):  # past max_images (the shard's order is increasing)
                        break
                    continue  # every image of this batch was unreadable (data.skip_corrupt)
                batch = {k: (v[keep].to(self.device, non_blocking=True) if torch.is_tensor(v) else v)
                         for k, v in batch.items()}
                self._batch(dict(batch, image=normalize_images(batch["image"])), baselines)
                bar.update(int(keep.sum()))
            bar.close()
        return self._results_over_ranks()

    def _results_over_ranks(self) -> dict[str, dict[str, float]]:
        """Counts summed, figure pieces gathered, and every metric computed in one order on every rank
        (torchmetrics synchronize inside ``compute``): one process gives the same numbers as N."""
        names = sorted(set().union(*gather_objects(sorted(self.scores))))
        for name in names:
            self._scores(name)
        keys = gather_objects({name: sorted(self.scores[name].means) for name in names})
        for name in names:
            for key in set().union(*(k[name] for k in keys)):
                self.scores[name].means.setdefault(key, MeanMetric())
        judges = sorted(self.judge_accuracy)
        layout = [len(self.scores[name].counts()) for name in names]
        flat = sum_over_ranks([c for name in names for c in self.scores[name].counts()] +
                              [float(self.judge_accuracy[j].update_count) for j in judges] +
                              [float(self.lficam_accuracy.update_count), float(self.skipped_images)])
        results, offset = {}, 0
        for name, size in zip(names, layout):
            results[name] = self.scores[name].result(flat[offset: offset + size])
            offset += size
        for j in judges:
            self.clean_top1[j] = float(self.judge_accuracy[j].compute()) if flat[offset] else float("nan")
            offset += 1
        self.lficam_top1 = float(self.lficam_accuracy.compute()) if flat[offset] else float("nan")
        self.skipped_images = int(flat[offset + 1])
        for samples, maps in gather_objects((self._figure_samples, self._figure_maps)):
            self._figure_samples.update(samples)
            for name, by_index in maps.items():
                self._figure_maps.setdefault(name, {}).update(by_index)
        self._assemble_figure()
        return {name: results[name] for name in sorted(results, key=list(self.scores).index)}

    def _assemble_figure(self) -> None:
        order = sorted(self._figure_samples)
        if not order:
            return
        self.figure_images = torch.stack([self._figure_samples[i][0] for i in order])
        self.figure_boxes = [self._figure_samples[i][1:] for i in order]
        self.figure_maps = {name: [maps.get(i) for i in order] for name, maps in self._figure_maps.items()}

    def _batch(self, batch: dict, baselines: dict[str, SaliencyMethod]) -> None:
        x, y = batch["image"], batch["label"]
        with torch.no_grad():
            logits, feats = self.classifier(x)
        preds = logits.argmax(1)
        self._clean_judge_accuracy(x, y, logits)
        # dataset positions: the same images are slow / even / in the figure on any rank count
        b = ScoredBatch(x, y, batch["boxes"], batch["box_valid"], batch["index"],
                        batch["index"] < self.cfg.max_images_slow, batch.get("object_mask"))
        producers, explained = self._producers(x, y, preds, baselines)
        for name, produce in producers.items():
            self._score_method(name, produce, b, feats, logits, explained.get(name, (self.own, preds)))
        for row in range(len(x)):
            if int(b.index[row]) in self.figure_rows:
                self._figure_samples[int(b.index[row])] = (x[row].cpu(), b.gt[row].cpu(), b.valid[row].cpu())

    @torch.no_grad()
    def _clean_judge_accuracy(self, x: Tensor, y: Tensor, logits: Tensor) -> None:
        for judge_name, judge in self.judges.items():
            labels = judge.labels(y)
            known = labels >= 0  # clean top-1 over the images of classes the judge was trained on
            if known.any():
                judge_logits = logits if judge_name == "own" else logits_of(judge.model(x))
                self.judge_accuracy[judge_name].update((judge_logits.argmax(1) == labels)[known].float().cpu() * 100)

    def _producers(self, x: Tensor, y: Tensor, preds: Tensor, baselines: dict[str, SaliencyMethod]
                   ) -> tuple[dict[str, MapFn], dict[str, tuple[KnownClasses, Tensor]]]:
        """Each method's map function, and for those that do not explain the masker's classifier, the
        classifier they explain with its predictions."""
        h, w = x.shape[-2:]
        producers: dict[str, MapFn] = {}
        explained: dict[str, tuple[KnownClasses, Tensor]] = {}
        if "casm" in self.cfg.methods:
            producers["casm"] = lambda x_, f_, l_: self.trained.masker(x_, f_)[:, 0]
        if self.lficam is not None:
            producers["lficam"] = lambda x_, f_, l_: self.lficam.model.explain(x_)
            with torch.no_grad():
                explained["lficam"] = (self.lficam, self.lficam.model(x)[0].argmax(1))
            lficam_labels = self.lficam.labels(y)
            if (lficam_labels >= 0).any():
                hits = explained["lficam"][1] == lficam_labels
                self.lficam_accuracy.update(hits[lficam_labels >= 0].float().cpu() * 100)
        baseline_preds = {"": preds}
        with torch.no_grad():
            for suffix, known in self.baseline_models.items():
                if suffix:
                    baseline_preds[suffix] = known.model(x)[0].argmax(1)
        for name, method in baselines.items():
            producers[name] = (lambda m: (lambda x_, f_, l_: m(x_)))(method)
            suffix = name[name.index("@"):] if "@" in name else ""
            explained[name] = (self.baseline_models[suffix], baseline_preds[suffix])
        for ref in REFERENCES:
            producers[ref] = (lambda kind: (lambda x_, f_, l_: reference_map(kind, len(x_), h, w, x_.device)))(ref)
        return producers, explained

    def _score_method(self, name: str, produce: MapFn, b: ScoredBatch, feats: dict[str, Tensor], logits: Tensor,
                      explains: tuple[KnownClasses, Tensor]) -> None:
        """One method's maps for the batch (timed; the slow ones on the first images only), then its scores."""
        rows = b.slow_ok if name.split("@")[0] in PERTURBATION_METHODS else torch.ones_like(b.slow_ok)
        s = self._scores(name)
        if not rows.any():
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad() if name in ("casm", "lficam", *REFERENCES) else torch.enable_grad():
            maps = produce(b.x[rows], {k: v[rows] for k, v in feats.items()}, logits[rows]).detach().float()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        s.seconds += time.perf_counter() - start
        target, preds = explains
        s.images += int(rows.sum())
        s.images_seen += int((rows & (target.labels(b.y) >= 0)).sum())
        finite = torch.isfinite(maps).flatten(1).all(dim=1)
        s.nan_maps += int((~finite).sum())
        sel = rows.nonzero()[:, 0][finite]  # batch rows with a usable map
        maps = maps[finite]
        if len(sel) == 0:
            return
        self._update(name, s, maps, sel, b, target, preds)
        if name != "full_image":
            for j, row in enumerate(sel.tolist()):
                if int(b.index[row]) in self.figure_rows:
                    self._figure_maps.setdefault(name, {})[int(b.index[row])] = maps[j].cpu()

    def _update(self, name: str, s: MethodScores, maps: Tensor, sel: Tensor, b: ScoredBatch, target: KnownClasses,
                preds: Tensor) -> None:
        """Scores of one method's maps for the batch rows ``sel``. ``target`` is the classifier they
        explain: its ``preds`` decide which boxes count as correctly classified (OM), it runs the
        faithfulness curves and is the "own" judge, all on images of classes it knows only; the
        box-only metrics (LE, F1, sweep, pointing) take every image."""
        labels = target.labels(b.y)
        seen = labels >= 0
        correct = seen & (preds == labels)
        s.stats.update(maps)
        if b.object_mask is not None:
            s.pxap.update(maps, b.object_mask[sel])
        has_box = b.valid[sel].any(dim=1)
        if has_box.any():
            self._update_boxes(name, s, maps[has_box], sel[has_box], b, dict(correct=correct, seen=seen))
        variants = masked_variants(b.x[sel], binarize(maps, self.cfg.binarization, self.cfg.alpha),
                                   fill=self.cfg.fill or "mean")  # once, however many judges
        for judge_name, judge in {**self.judges, "own": target}.items():
            judge_labels = judge.labels(b.y[sel])
            rows = judge_labels >= 0  # a judge scores only images of classes it was trained on
            if not rows.any():
                continue
            hits = judge_hits(judge.model, {k: v[rows] for k, v in variants.items()}, judge_labels[rows])
            for variant, hit in hits.items():
                s.mean(f"acc_{variant}" + ("" if judge_name == "own" else f"@{judge_name}"), hit * 100)
        slow = b.slow_ok[sel] & seen[sel]
        if slow.any():
            xs, ms, ts = b.x[sel][slow], maps[slow], preds[sel][slow]
            for mode in ("deletion", "insertion"):
                _, auc = deletion_insertion(target.model, xs, ms, ts, mode, self.cfg.faithfulness_steps)
                s.mean(mode, auc)
            drop, increase = average_drop_increase(target.model, xs, ms, ts)
            s.mean("average_drop", drop)
            s.mean("increase_in_confidence", increase)
        road = slow & (b.index[sel] < self.cfg.road_images)
        if road.any():
            for key, values in road_scores(target.model, b.x[sel][road], maps[road], preds[sel][road],
                                           keys=b.index[sel][road]).items():
                s.mean(key, values)

    def _update_boxes(self, name: str, s: MethodScores, maps: Tensor, sel: Tensor, b: ScoredBatch,
                      classified: dict[str, Tensor]) -> None:
        """The box metrics of the rows ``sel`` that have boxes: LE/OM under both rules, the threshold sweep
        (chosen on even images, read on odd ones), MaxBoxAccV2, F1 and the pointing games."""
        g, v = b.gt[sel], b.valid[sel]
        s.max_box_acc.update(maps, g, v, b.index[sel])
        known = {k: t[sel] for k, t in classified.items()}
        if name in REFERENCES:
            boxes = reference_boxes(REFERENCES[name], len(sel), *b.x.shape[-2:], b.x.device)
            s.localization.update(g, v, boxes=boxes, **known)
            s.localization_other_rule.update(g, v, boxes=boxes, **known)
        else:
            s.localization.update(g, v, maps=maps, **known)
            s.localization_other_rule.update(g, v, maps=maps, **known)
            even = b.index[sel] % 2 == 0
            if even.any():
                s.sweep_select.update(maps[even], g[even], v[even])
            if (~even).any():
                s.sweep_test.update(maps[~even], g[~even], v[~even])
        s.f1.update(maps, g, v)
        s.mean("pointing_game", pointing_game(maps, g, v, self.cfg.pointing_tolerance))
        s.mean("energy_pointing_game", energy_pointing_game(maps, g, v))


@dataclass(frozen=True)
class ScoredBatch:
    """One evaluation batch as every method's scores see it."""

    x: Tensor  # (B, 3, H, W) normalized images
    y: Tensor  # (B,) labels of the evaluated data
    gt: Tensor  # (B, N, 4) boxes
    valid: Tensor  # (B, N) which boxes are real
    index: Tensor  # (B,) dataset positions
    slow_ok: Tensor  # (B,) among the first max_images_slow images: Score-CAM and the faithfulness curves
    object_mask: Tensor | None = None  # (B, H, W) bool each object's pixels, where the data has them (PxAP)


def _listed(names: list[str] | None, shown: int = 4) -> str:
    if not names:
        return "no class names"
    return f"{len(names)} classes ({', '.join(names[:shown])}{', ...' if len(names) > shown else ''})"


def figure_picks(labels: list[int], count: int) -> list[int]:
    """Dataset indices for the figure, spread over classes: the first image of each class in turn, then
    the second of each, ... (a sorted folder's first images are otherwise all of one class)."""
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    picks, depth = [], 0
    while len(picks) < count and any(depth < len(v) for v in by_class.values()):
        picks += [v[depth] for v in by_class.values() if depth < len(v)][: count - len(picks)]
        depth += 1
    return sorted(picks)


def next_free_folder(base: Path) -> Path:
    """``base`` if it does not exist yet, else ``base_2``, ``base_3``, ...: an evaluation never
    overwrites an earlier one made with other options."""
    if not base.exists():
        return base
    n = 2
    while base.with_name(f"{base.name}_{n}").exists():
        n += 1
    return base.with_name(f"{base.name}_{n}")


def evaluate(cfg: DictConfig, progress: bool = True, trained: TrainedRun | None = None
             ) -> tuple[dict, "Evaluator", Path]:
    """Run the whole evaluation; returns (results, evaluator, output folder). ``trained``: the run of
    ``cfg.checkpoint`` when the caller has read it already."""
    run = trained or read_run(cfg.checkpoint)
    with launched_processes(cfg.device) as device:
        out = Path(cfg.out_dir) if cfg.out_dir else next_free_folder(run_folder(cfg.checkpoint) / "eval")
        out = Path(gather_objects(str(out))[0])  # rank 0's choice: the folders may appear between the ranks' looks
        with FolderLock(out, "evaluation") if rank() == 0 else nullcontext():  # one evaluation writes a folder
            torch.manual_seed(cfg.seed)
            datamodule = LocalizationDataModule(cfg.data, cfg.seed, splits=("val",), shard=(rank(), world_size()))
            datamodule.setup()
            evaluator = Evaluator(cfg, run, device, datamodule.classes)
            results = evaluator.run(datamodule.val_dataloader(), progress)
            if rank() == 0:
                write_reports(out, results, evaluator, OmegaConf.to_container(cfg, resolve=True), run.config,
                              evaluation_notes(evaluator, results))
    return results, evaluator, out


def evaluation_notes(evaluator: Evaluator, results: dict) -> list[str]:
    """What a reader of the report must know to read its numbers."""
    notes = ["clean top-1 of the classifiers judging masked images: " + ", ".join(
        f"{name} {value:.1f} %" for name, value in evaluator.clean_top1.items() if value == value)]
    for name, known in evaluator.partial_judges.items():
        notes.append(f"judge {name} knows {known.split()[0]} of the evaluated classes: its @{name} columns score "
                     f"images of those classes only")
    unseen = len(evaluator.data_classes) - evaluator.own.known_count
    if unseen:
        notes.append(f"{unseen} of the {len(evaluator.data_classes)} evaluated classes were never seen by the "
                     f"checkpoint's classifier: LE, F1, box accuracy and pointing games count every image; OM, "
                     f"the 'own' judge and the faithfulness curves only images of the classes it knows "
                     f"(images_seen); other judges only images of classes they know")
    if evaluator.lficam is not None:
        notes.append(f"lficam explains LFI-CAM's own classifier (clean top-1 {evaluator.lficam_top1:.1f} %): "
                     f"its correct-class boxes, faithfulness curves and 'own' judge use that classifier")
    if evaluator.skipped_images:
        notes.append(f"{evaluator.skipped_images} unreadable validation image(s) were skipped (data.skip_corrupt)")
    if not any("le" in r for r in results.values()):
        notes.append("the validation data has no boxes: localization metrics (LE, OM, F1, sweep, pointing) skipped")
    collapsed = read_collapse(run_folder(evaluator.cfg.checkpoint)) if evaluator.cfg.checkpoint \
        else []
    if collapsed:
        notes.append(f"COLLAPSED: the training run's masks failed the collapse check at its last validation "
                     f"({'; '.join(collapsed)}): the casm rows are not a result (RUN/health.json)")
    for name, r in results.items():
        if r["nan_maps"]:
            notes.append(f"{name}: {r['nan_maps']} map(s) contained NaN/inf and were left out of every metric")
    return notes
