"""Typed configuration: a dataclass schema, YAML experiment files and ``key=value`` overrides.

The schema's defaults *are* the laptop default run; an experiment YAML overrides only what differs
and may ``inherit`` other YAML files (paths relative to itself), merged first, in order. OmegaConf's
struct mode rejects unknown keys; :func:`load_config` turns that into a one-line error naming the key
and the nearest valid ones.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from casm.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # shipped in the package; ./configs in a checkout links here


@dataclass
class DataConfig:
    name: str = "synthetic"  # synthetic | folder | imagenet
    root: Optional[str] = None  # folder / imagenet: dataset root (see README "Bring your own data")
    boxes_file: Optional[str] = None  # folder: CSV of validation boxes; default ROOT/val_boxes.csv
    image_size: int = 64  # network input side (the crop for folder / imagenet)
    # training augmentation (folder / imagenet / synthetic); null: the dataset's default, see README "Augmentation"
    random_crop: Optional[bool] = None  # RandomResizedCrop; null: on for folder / imagenet, off for synthetic
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # its range of kept area (torchvision's)
    flip: Optional[bool] = None  # horizontal flips; null: on for folder / imagenet, off for synthetic
    # evaluation geometry (folder / imagenet); the training images use it too when random_crop is off
    resize: Optional[int] = None  # shorter side before the centre crop; null: 256/224 x image_size for imagenet
    #                               (the paper), image_size for folder (a square image loses no pixel)
    center_crop: bool = True  # false: resize the whole image to image_size x image_size (no pixel cut; aspect changes)
    num_train: int = 5000  # synthetic only: images per split
    num_val: int = 1000
    seed: int = 0  # synthetic only: the dataset's own seed
    synthetic_classes: int = 10  # synthetic only: 10 (one cue per class) | 100 (any two cues) | 1000 (all three)
    include_classes: Optional[list[str]] = None  # class names (or synthetic class ids) to keep
    exclude_classes: Optional[list[str]] = None  # class names to drop
    split_file: Optional[str] = None  # a class split (python -m casm split) ...
    split_subsets: Optional[list[str]] = None  # ... and the subsets of it to keep, e.g. [C, D, E, F]
    samples_per_class: Optional[int] = None  # training split only: at most N images per class (data scarcity)
    # the training budget's unit: images per epoch whatever the training split's size (a smaller split is cycled,
    # each image once per shuffled pass), so warm-up, lr decay and validation, all counted in epochs, mean the
    # same number of optimizer steps for 20 % of the classes as for 95 % (null: one pass over the split)
    epoch_images: Optional[int] = None
    batch_size: int = 64  # the GLOBAL batch: images per step over all devices and nodes (each loads its share)
    num_workers: int = 2
    pin_memory: bool = True
    skip_corrupt: bool = False  # skip unreadable images (counted in the log) instead of failing
    shuffle_labels: bool = False  # training split only: labels randomly permuted (the data-randomization test)


@dataclass
class NetworkSpec:
    """A network from outside casm (docs/own_classifier.md): ``builder(**kwargs)`` with ``weights``."""

    builder: str = MISSING  # importable callable: torchvision.models.convnext_tiny, or my_package.models:build
    weights: Optional[str] = None  # state dict (.pt/.pth/.safetensors), or a torchvision weights name (IMAGENET1K_V1)
    kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {num_classes: 10}


@dataclass
class ClassifierSpec(NetworkSpec):
    """A classifier from outside casm, and the names of its outputs."""

    classes: Optional[str] = None  # text file, a class name per line in output order (null: the weights' own names)


@dataclass
class ModelConfig:
    arch: str = "resnet18"  # resnet18 | resnet34 | resnet50 (the classifier's; and the masker's encoder)
    width: int = 64  # base width; 64 = torchvision's ResNets, smaller for tiny runs
    pretrained: Optional[str] = None  # torchvision or casm weights file for the classifier
    # the user's own classifier instead of a casm ResNet (the masker then reads its own ResNet encoder)
    classifier: Optional[ClassifierSpec] = None
    # sanity check: train the masker against this classifier edited by a manipulation attack T1-T4 (docs/sanity.md;
    # needs casm.thinning=F and masker.encoder=separate: the masker then learns from its outputs alone)
    manipulation: Optional[str] = None


@dataclass
class EncoderSpec(NetworkSpec):
    """Another network as the masker's encoder: its modules named in ``layers`` give the features the head
    reads."""

    # head feature -> module name, e.g. {stem: features.0, layer1: features.1, ..., layer4: features.7}
    layers: dict[str, str] = field(default_factory=dict)


@dataclass
class MaskerConfig:
    head: str = "casme"  # casme | deconv | lfi | abn (heads register in casm/models/head_registry.py)
    encoder: str = "shared"  # shared (the classifier's trunk, detached) | separate
    hidden: int = 64  # decoder width (lfi: the Feature Importance Network's width; abn: its branch width)
    feature_layer: Optional[str] = None  # lfi / abn heads: the layer they read (null: layer4 / layer3)
    encoder_pretrained: Optional[str] = None  # separate encoder: weights file
    encoder_model: Optional[EncoderSpec] = None  # separate encoder: another network than casm's ResNet


@dataclass
class CasmConfig:
    thinning: str = "L100"  # F | L | FL | L100 | L1000 (docs/training.md)
    p_pool: Optional[float] = None  # null: the strategy's value
    snapshot_every: Optional[int] = None  # null: the strategy's value (steps at optim.lr_reference_batch)
    pool_size: Optional[int] = None  # null: the strategy's value
    score: str = "E"  # E (entropy) | C (classification)
    lambda_mode: str = "paper"  # paper (fixed lambda_r) | target_area (lambda_r adapted online)
    lambda_r: Optional[float] = None  # fixed value (paper) or start (target_area); null: the paper's value
    target_area: float = 0.5  # target_area mode: desired mean mask
    lambda_lr: float = 0.05  # target_area mode: step of the dual update on lambda_r
    warmup_epochs: int = 0  # epochs that train the classifier alone before the masker starts (the cap, with ...)
    warmup_accuracy: Optional[float] = None  # ... end the warm-up after the first epoch whose val top-1 reaches this
    masker_grad_clip: float = 10.0
    masker_warmup_steps: int = 0  # masker lr ramps linearly from 0 over these steps (0: off)
    # validate, save and export an exponential moving average of the masker over about this many steps
    masker_average_steps: Optional[int] = None  # (training is unchanged; training/averaging.py); null: the last weights
    max_nonfinite_steps: int = 20  # consecutive non-finite (or diverging) steps before the run stops
    divergence_loss: Optional[float] = 1000.0  # a loss above this is divergence: the step is skipped (null: off)
    # beyond the paper (Phang et al. 2020; casm/training/losses.py, fills.py); 0 / mean: the paper's objective
    lambda_in: float = 0.0  # weight of the masked-in classification term CE(f(m * x), y)
    lambda_tv: float = 0.0  # weight of the mask's total variation
    # which images pay for their mask's area: confused (the paper: right when clean, wrong when masked out) | all
    area_gate: str = "confused"
    # keep the mask's logits within ±this (a penalty beyond it; sigmoid heads): a saturated mask has no gradient
    mask_logit_bound: Optional[float] = None  # null: off (the paper). 4: the mask stays in [0.018, 0.982]
    # the current classifier also trains on masked-out images (the paper's eq. 8); false: on clean images only
    classifier_on_masked: bool = True
    fill: str = "mean"  # what replaces removed pixels: mean | blur | telea | noise (evaluation uses the same)


@dataclass
class OptimConfig:
    classifier_optimizer: str = "sgd"  # sgd (the paper) | adam (learns faster from scratch on small data)
    classifier_lr: float = 1e-3
    classifier_momentum: float = 0.9
    classifier_weight_decay: float = 1e-4
    masker_lr: float = 1e-3
    masker_weight_decay: float = 1e-4
    lr_step_epochs: int = 20  # both learning rates x lr_gamma every lr_step_epochs epochs
    lr_gamma: float = 0.1
    masker_lr_gamma: Optional[float] = None  # the masker's own factor (null: lr_gamma; 1: never decayed)
    # the global batch the lrs (and casm.snapshot_every) are stated for; a larger data.batch_size scales the lrs
    # by the rules below and counts snapshot intervals in images (null: data.batch_size; see training/batching.py)
    lr_reference_batch: Optional[int] = None
    classifier_lr_scaling: str = "linear"  # linear | sqrt | none (linear: Goyal et al. 2017, for SGD)
    masker_lr_scaling: str = "sqrt"  # linear | sqrt | none (sqrt: the square-root rule for Adam)


@dataclass
class TrainerConfig:
    max_epochs: int = 10
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1  # machines; devices per machine x num_nodes processes in all
    strategy: str = "auto"
    precision: str = "32-true"  # or bf16-mixed on GPUs (16-mixed is refused: see validate)
    limit_train_batches: Any = 1.0  # the paper uses 20 % of ImageNet per epoch: 0.2
    limit_val_batches: Any = 1.0
    max_val_images: Optional[int] = None  # validate on the first N images (whole global batches); null: all
    log_every_n_steps: int = 10
    checkpoint_every_n_steps: Optional[int] = None  # also checkpoint mid-epoch (optimizer steps: 2 per CASM batch)
    keep_step_checkpoints: int = 2  # the newest N step checkpoints are kept (each holds the whole pool)
    check_val_every_n_epoch: int = 1  # validate after epochs N, 2N, ... (a cap on images: limit_val_batches)


@dataclass
class LoggingConfig:
    out_dir: str = "runs"
    name: str = "default"
    version: Optional[str] = None  # null: version_N, the next free one
    image_every_n_steps: int = 100  # mask image grids in TensorBoard
    progress_bar: bool = True


@dataclass
class UnseenConfig:
    """``python -m casm experiment unseen``: the unseen-class protocol (CASM paper 6.4, docs/unseen.md)."""

    split_file: Optional[str] = None  # null: OUT/NAME/split.json, written from the data on the first run
    proportions: list[float] = field(default_factory=lambda: [0.05, 0.05, 0.10, 0.30, 0.30, 0.20])  # A, B, C, ...
    split_seed: int = 0
    training_sets: list[str] = field(default_factory=lambda: ["B-F", "C-F", "D-F", "E-F", "F"])  # ranges or B+D
    scarcity_set: Optional[str] = "B-F"  # the training set of the data-scarcity row ...
    scarcity_samples_per_class: Optional[int] = None  # ... with N training images per class (null: no such row)
    judge: bool = True  # train one classifier on every class to judge masked-out images of all subsets
    seeds: Optional[list[int]] = None  # every training set once per seed (null: the config's seed alone)
    judge_seed_offset: int = 1  # the judge's seed = (first) seed + this (an independent classifier)
    eval_overrides: list[str] = field(default_factory=lambda: ["methods=[casm]"])  # evaluate.py key=value


@dataclass
class StudyEvaluation:
    """How every run of a study is scored: the same images (the base config's validation split), the same
    methods and the same judges."""

    overrides: list[str] = field(default_factory=lambda: ["methods=[casm]"])  # evaluate.py key=value
    judge: bool = True  # train one classifier (the base config, every epoch a warm-up) to judge masked-out images
    judge_seed: int = 100  # its seed: independent of every run's
    judge_overrides: list[str] = field(default_factory=list)  # e.g. [model.arch=resnet34]
    classifiers: list[str] = field(default_factory=list)  # more judges: checkpoints of classifiers trained earlier


@dataclass
class StudyConfig:
    """``python -m casm experiment study --config STUDY.yaml``: variants x seeds, one report (docs/studies.md)."""

    name: str = MISSING  # the study's folder under out_dir
    base: Optional[str] = None  # training YAML every run starts from, relative to the study file (null: the default)
    overrides: list[str] = field(default_factory=list)  # key=value for every run (before the variant's own)
    variants: dict[str, list[str]] = MISSING  # name -> its key=value overrides ([] : the base as it is)
    reference: Optional[str] = None  # the variant the others are compared with, paired by seed (null: the first)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # every variant trains once per seed
    metrics: list[str] = field(default_factory=lambda: ["le", "om", "f1", "sweep_box_accuracy", "mask_mean",
                                                        "acc_masked_out@judge", "clean_top1"])
    evaluation: StudyEvaluation = field(default_factory=StudyEvaluation)
    out_dir: str = "runs/studies"
    launcher: str = "local"  # local (one run after the other) | submitit (every run its own job: SLURM)
    submitit: Optional[dict[str, Any]] = None  # AutoExecutor parameters, e.g. {slurm_partition: gpu,
    #                                                   timeout_min: 600, gpus_per_node: 8, cluster: local}


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    masker: MaskerConfig = field(default_factory=MaskerConfig)
    casm: CasmConfig = field(default_factory=CasmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    unseen: UnseenConfig = field(default_factory=UnseenConfig)  # read by the unseen-class experiment only
    mode: str = "casm"  # casm (classifier + masker) | lficam (LFI-CAM's own classifier, cross-entropy only)
    seed: int = 0
    resume: Optional[str] = None  # a checkpoint to continue from; last: the newest in the run's folder, if any


RESUME_LAST = "last"  # resume=last: the newest checkpoint in the run's own folder, or a fresh start


MANIPULATION_ATTACKS = ("T1", "T2", "T3", "T4")  # the Grad-CAM attacks of casm/models/manipulation.py


class ConfigError(UserError):
    """A config file or override that does not fit the schema."""


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            keys += _all_keys(node._get_node(k), f"{full}.")
    return keys


def _suggest(bad_key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(bad_key, valid, n=3, cutoff=0.5)
    if not close:  # compare the last component too: "casm.tinning" -> "casm.thinning"
        leaf = bad_key.rsplit(".", 1)[-1]
        close = [k for k in valid if k.rsplit(".", 1)[-1] in difflib.get_close_matches(
            leaf, [v.rsplit(".", 1)[-1] for v in valid], n=3, cutoff=0.6)][:3]
    return f"; did you mean {', '.join(close)}?" if close else ""


def _check_keys(candidate: DictConfig, schema: DictConfig, source: str) -> None:
    valid = _all_keys(schema)
    for key in _all_keys(candidate):
        if key not in valid and not any(key.startswith(f"{v}.") for v in valid if _is_leaf(schema, v)):
            raise ConfigError(f"{source}: unknown config key '{key}'{_suggest(key, valid)}")


def _is_leaf(schema: DictConfig, key: str) -> bool:
    return not isinstance(OmegaConf.select(schema, key), (DictConfig, ListConfig))


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[DictConfig, str]]:
    """The file's own settings, preceded by those it inherits (depth first)."""
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path in seen:
        raise ConfigError(f"{path}: inherits itself (cycle {' -> '.join(map(str, seen))})")
    try:
        node = OmegaConf.load(path)
    except Exception as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    parents = node.pop("inherit", None) or []
    layers: list[tuple[DictConfig, str]] = []
    for parent in [parents] if isinstance(parents, str) else parents:
        layers += _read_yaml(path.parent / parent, seen + (path,))
    return layers + [(node, str(path))]


def with_defaults(saved: dict) -> DictConfig:
    """A training config saved by an earlier casm version, completed with today's defaults for the keys
    it predates (a new option's default is the old behaviour); keys since removed are kept, unused."""
    defaults = OmegaConf.create(OmegaConf.to_container(OmegaConf.structured(Config)))  # untyped: no key is refused
    return OmegaConf.merge(defaults, saved)


def config_changes(before: dict | DictConfig, after: dict | DictConfig, ignore: tuple[str, ...] = ()) -> list[str]:
    """``key: old -> new`` for every setting that differs between two configs (lists compare whole), so a
    resumed run can say what it continues with that the run was not started with."""
    def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(node, dict):
            return {prefix: node}
        found: dict[str, Any] = {}
        for key, child in node.items():
            found.update(leaves(child, f"{prefix}.{key}" if prefix else str(key)))
        return found

    old, new = (leaves(OmegaConf.to_container(OmegaConf.create(c), resolve=True)) for c in (before, after))
    return [f"{key}: {old.get(key)} -> {new.get(key)}" for key in sorted(old.keys() | new.keys())
            if key not in ignore and old.get(key) != new.get(key)]


def parse_overrides(overrides: list[str]) -> DictConfig:
    """``key=value`` strings as one config; a value YAML cannot read is refused naming the override (a shell
    passes ``k=[a=[b],c]`` unquoted, and YAML needs list items holding brackets or ``=`` quoted)."""
    for item in overrides:
        try:
            OmegaConf.from_dotlist([item])
        except (yaml.YAMLError, OmegaConfBaseException) as err:
            reason = str(getattr(err, "problem", None) or err).splitlines()[0]
            raise ConfigError(f"override {item!r}: its value is not valid YAML ({reason}); quote list items that "
                              f"hold brackets, e.g. 'key=[\"methods=[casm]\",max_images_slow=0]'") from err
    return OmegaConf.from_dotlist(overrides)


def load_config(config_file: str | Path | None = None, overrides: list[str] | None = None,
                schema_class: type = None, base: DictConfig | dict | None = None) -> DictConfig:
    """Schema defaults <- ``base`` <- YAML file(s) <- ``key=value`` overrides, type-checked, unknown
    keys rejected. ``schema_class`` defaults to the training :class:`Config`."""
    schema = OmegaConf.structured(schema_class or Config)
    cfg = OmegaConf.merge(schema, base) if base is not None else schema.copy()
    layers = _read_yaml(Path(config_file)) if config_file else []
    for bad in [o for o in overrides or [] if "=" not in o]:
        raise ConfigError(f"override {bad!r} is not of the form key=value")
    if overrides:
        layers.append((parse_overrides(overrides), "command line"))
    for layer, source in layers:
        _check_keys(layer, schema, source)
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as err:
            key = getattr(err, "full_key", None) or "?"
            message = str(getattr(err, "msg", err)).splitlines()[0]
            raise ConfigError(f"{source}: bad value for {key}: {message}") from err
    OmegaConf.set_struct(cfg, True)
    check_finite(cfg)
    if schema_class in (None, Config):
        validate(cfg)
    elif "data" in cfg:
        validate_data(cfg.data)
    if schema_class is EvalConfig:
        _check_ranges(cfg, _EVAL_RANGES)
    return cfg


_CHOICES = {
    "data.name": ("synthetic", "folder", "imagenet"),
    "model.arch": ("resnet18", "resnet34", "resnet50"),
    "masker.encoder": ("shared", "separate"),
    "casm.thinning": ("F", "L", "FL", "L100", "L1000"),
    "casm.score": ("E", "C"),
    "casm.area_gate": ("confused", "all"),
    "casm.lambda_mode": ("paper", "target_area"),
    "casm.fill": ("mean", "blur", "telea", "noise"),
    "optim.classifier_optimizer": ("sgd", "adam"),
    "optim.classifier_lr_scaling": ("linear", "sqrt", "none"),
    "optim.masker_lr_scaling": ("linear", "sqrt", "none"),
    "mode": ("casm", "lficam"),
}


@dataclass
class JudgeConfig(ClassifierSpec):
    """A judge from outside casm (docs/evaluation.md): a classifier spec whose weights are required (null
    ``classes``: the evaluated data's)."""

    weights: str = MISSING  # state dict: .pt/.pth (read with weights_only=True) or .safetensors, or a weights name
    name: Optional[str] = None  # null: the builder's last name


@dataclass
class EvalConfig:
    """``evaluate.py``: which methods, on which data, with which metric settings (docs/evaluation.md)."""

    checkpoint: Optional[str] = None  # a casm training checkpoint (set by --checkpoint)
    data: DataConfig = field(default_factory=DataConfig)  # default: the checkpoint's own data config
    methods: list[str] = field(default_factory=lambda: ["casm", "cam", "gradcam", "gradcampp", "scorecam"])
    lficam_checkpoint: Optional[str] = None  # a mode=lficam checkpoint: adds its attention maps as "lficam"
    target_layer: Optional[str] = None  # for the CAM baselines; null: the last stage
    chunk_size: int = 256  # (image, channel or mask) pairs per forward pass of Score-CAM, Ablation-CAM and RISE
    rise_masks: int = 2000  # RISE's random masks per image (its paper: 4000-8000 for ImageNet)
    max_images: Optional[int] = None  # cap on evaluated images (null: the whole validation split)
    max_images_slow: int = 200  # cap for Score-CAM, Ablation-CAM, RISE and the faithfulness curves
    binarization: str = "quantile"  # quantile | alpha_mean (docs/evaluation.md)
    alpha: float = 1.0
    sweep_thresholds: int = 21
    wsol_thresholds: int = 100  # MaxBoxAccV2 and PxAP: thresholds 0, 1/N, ..., (N-1)/N (Choe et al.: 100)
    faithfulness_steps: int = 32  # deletion / insertion steps
    road_images: int = 100  # ROAD on the first N images (within max_images_slow; 0: off); slow on a CPU
    pointing_tolerance: int = 15
    classifiers: list[str] = field(default_factory=list)  # more classifier checkpoints (judges, docs/evaluation.md)
    judges: list[JudgeConfig] = field(default_factory=list)  # ... and classifiers from outside casm
    baseline_classifiers: list[str] = field(default_factory=list)  # also run the baselines on these
    figure_images: int = 8
    fill: Optional[str] = None  # removed pixels in the masked-in/out scores: mean | blur | telea | noise
    #                             (null: the training run's casm.fill, so they are scored as they were trained)
    out_dir: Optional[str] = None  # null: RUN/eval next to the checkpoint
    device: str = "auto"
    seed: int = 0


# key -> (lowest allowed value, whether it must be strictly above it); None values mean "the default"
_RANGES = {
    "data.image_size": (32, False), "data.batch_size": (0, True), "data.num_train": (0, True),
    "data.num_val": (0, True), "data.num_workers": (0, False), "data.epoch_images": (0, True),
    "model.width": (0, True),
    "masker.hidden": (0, True), "casm.pool_size": (0, True), "casm.snapshot_every": (0, True),
    "casm.lambda_r": (0, False), "casm.lambda_lr": (0, False), "casm.warmup_epochs": (0, False),
    "casm.masker_grad_clip": (0, True), "casm.masker_warmup_steps": (0, False),
    "casm.masker_average_steps": (0, True),
    "casm.max_nonfinite_steps": (0, True), "casm.divergence_loss": (0, True),
    "casm.lambda_in": (0, False), "casm.lambda_tv": (0, False), "casm.mask_logit_bound": (0, True),
    "optim.classifier_lr": (0, True), "optim.masker_lr": (0, True),
    "optim.classifier_momentum": (0, False), "optim.classifier_weight_decay": (0, False),
    "optim.masker_weight_decay": (0, False), "optim.lr_step_epochs": (0, True), "optim.lr_gamma": (0, True),
    "optim.masker_lr_gamma": (0, True), "optim.lr_reference_batch": (0, True),
    "trainer.max_epochs": (0, True), "trainer.num_nodes": (0, True), "trainer.log_every_n_steps": (0, True),
    "trainer.checkpoint_every_n_steps": (0, True), "trainer.keep_step_checkpoints": (0, True),
    "trainer.check_val_every_n_epoch": (0, True), "trainer.max_val_images": (0, True),
    "logging.image_every_n_steps": (0, False),
}
_EVAL_RANGES = {"chunk_size": (0, True), "rise_masks": (0, True), "max_images": (0, True),
                "max_images_slow": (0, False), "faithfulness_steps": (0, True), "sweep_thresholds": (1, True),
                "wsol_thresholds": (1, True), "road_images": (0, False)}


# why a lower bound is what it is, where it is not obvious
_RANGE_REASONS = {"data.image_size": " (a ResNet reduces its input 32-fold: smaller images leave no feature map)"}


def _check_ranges(cfg: DictConfig, ranges: dict[str, tuple[float, bool]] = _RANGES) -> None:
    for key, (low, strict) in ranges.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and (value <= low if strict else value < low):
            raise ConfigError(f"{key}={value} must be {'above' if strict else 'at least'} {low}"
                              f"{_RANGE_REASONS.get(key, '')}")


def check_finite(cfg: DictConfig) -> None:
    """No setting may be NaN or infinite: ``nan <= 0`` is false, so a range check alone lets them through,
    and a NaN learning rate or lambda_R would train nothing while the run reports success."""
    for key in _all_keys(cfg):
        value = OmegaConf.select(cfg, key)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value} must be a finite number (null where the key allows a default)")


FP16_PRECISIONS = ("16-mixed", "16", "16-true", "transformer-engine-float16")


def validate(cfg: DictConfig) -> None:
    """Check values the schema's types cannot: enumerations and ranges (before anything is built)."""
    from casm.models.head_registry import HEADS, SIGMOID_HEADS, check_feature_layer  # the models layer's names

    choices = dict(_CHOICES, **{"masker.head": tuple(HEADS)})
    for key, allowed in choices.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")
    _check_ranges(cfg)
    try:
        check_feature_layer(cfg.masker.head, cfg.masker.feature_layer)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if cfg.model.classifier is not None:
        _check_outside_classifier(cfg)
    if cfg.masker.encoder_model is not None:
        _check_encoder_model(cfg, HEADS)
    if cfg.casm.mask_logit_bound is not None and cfg.masker.head not in SIGMOID_HEADS:
        raise ConfigError(f"casm.mask_logit_bound={cfg.casm.mask_logit_bound} needs a head whose mask is a sigmoid "
                          f"({', '.join(SIGMOID_HEADS)}); masker.head={cfg.masker.head} has no logits to bound")
    if str(cfg.trainer.precision) in FP16_PRECISIONS:
        raise ConfigError(f"trainer.precision={cfg.trainer.precision} is not supported: fp16 needs loss scaling, "
                          f"and casm's gradients (torch.autograd.grad) never pass through Lightning's scaler, which "
                          f"would only unscale them: training silently wrong. Use trainer.precision=bf16-mixed")
    if cfg.trainer.max_val_images is not None and cfg.trainer.limit_val_batches != 1.0:
        raise ConfigError(f"trainer.max_val_images={cfg.trainer.max_val_images} and trainer.limit_val_batches="
                          f"{cfg.trainer.limit_val_batches} both cap validation: keep one")
    if cfg.model.manipulation is not None:
        if cfg.model.manipulation not in MANIPULATION_ATTACKS:
            raise ConfigError(f"model.manipulation={cfg.model.manipulation!r} is not one of "
                              f"{', '.join(MANIPULATION_ATTACKS)}")
        if cfg.casm.thinning != "F" or cfg.masker.encoder != "separate" or not cfg.model.pretrained:
            raise ConfigError("model.manipulation attacks a trained, fixed classifier: it needs model.pretrained=FILE, "
                              "casm.thinning=F and masker.encoder=separate (a shared encoder would read the "
                              "attacker's extra channel)")
    if cfg.casm.p_pool is not None and not 0 <= cfg.casm.p_pool <= 1:
        raise ConfigError(f"casm.p_pool={cfg.casm.p_pool} must be in [0, 1]")
    accuracy = cfg.casm.warmup_accuracy
    if accuracy is not None and not (0 < accuracy <= 1 and cfg.casm.warmup_epochs > 0):
        raise ConfigError(f"casm.warmup_accuracy={accuracy} must be in (0, 1] (a top-1 fraction) and needs "
                          f"casm.warmup_epochs > 0 as its cap")
    if not 0 < cfg.casm.target_area < 1:
        raise ConfigError(f"casm.target_area={cfg.casm.target_area} must be in (0, 1)")
    if cfg.data.name != "synthetic" and not cfg.data.root:
        raise ConfigError(f"data.name={cfg.data.name} needs data.root=PATH (the dataset's folder)")
    validate_data(cfg.data)


def _check_outside_classifier(cfg: DictConfig) -> None:
    """The combinations a classifier from outside casm cannot take, each refused in one line."""
    if OmegaConf.is_missing(cfg.model.classifier, "builder"):
        raise ConfigError("model.classifier.builder is missing: e.g. torchvision.models.convnext_tiny, or "
                          "my_package.models:build")
    if cfg.masker.encoder != "separate":
        raise ConfigError("model.classifier (a classifier from outside casm) has no ResNet features to share: set "
                          "masker.encoder=separate (the masker reads its own model.arch encoder)")
    for key in ("model.pretrained", "model.manipulation"):
        if OmegaConf.select(cfg, key):
            raise ConfigError(f"{key} applies to casm's own ResNet classifier, not to model.classifier (its weights "
                              f"are model.classifier.weights)")
    if cfg.mode != "casm":
        raise ConfigError(f"mode={cfg.mode} trains casm's own classifier; model.classifier needs mode=casm")


def _check_encoder_model(cfg: DictConfig, heads: dict) -> None:
    """``masker.encoder_model`` must name a builder and the feature maps the head reads."""
    from casm.models.resnet import FEATURE_NAMES

    spec = cfg.masker.encoder_model
    if OmegaConf.is_missing(spec, "builder"):
        raise ConfigError("masker.encoder_model.builder is missing: e.g. torchvision.models.convnext_tiny")
    if cfg.masker.encoder != "separate" or cfg.masker.encoder_pretrained:
        raise ConfigError("masker.encoder_model is the masker's own encoder: it needs masker.encoder=separate and "
                          "no masker.encoder_pretrained (its weights are masker.encoder_model.weights)")
    single = getattr(heads[cfg.masker.head], "default_feature_layer", None)
    needed = [cfg.masker.feature_layer or single] if single else list(FEATURE_NAMES)
    unknown = sorted(set(spec.layers) - set(FEATURE_NAMES))
    missing = [name for name in needed if name not in spec.layers]
    if unknown or missing:
        raise ConfigError(f"masker.encoder_model.layers must map {', '.join(needed)} (what the {cfg.masker.head} "
                          f"head reads) to modules of the encoder; "
                          + (f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(unknown)}"))


def validate_data(data: DictConfig) -> None:
    """Class-selection and sampling keys (training and evaluation alike)."""
    from casm.data.synthetic import CLASS_COUNTS

    if data.synthetic_classes not in CLASS_COUNTS:
        raise ConfigError(f"data.synthetic_classes={data.synthetic_classes} is not one of "
                          f"{', '.join(map(str, CLASS_COUNTS))}")
    if bool(data.split_file) != bool(data.split_subsets):
        raise ConfigError("data.split_file and data.split_subsets go together: the file, and the subsets of it "
                          "to keep (e.g. data.split_subsets=[C,D,E,F])")
    if data.split_file and (data.include_classes is not None or data.exclude_classes is not None):
        raise ConfigError("data.split_file selects the classes: drop data.include_classes / data.exclude_classes")
    scale = list(data.crop_scale)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ConfigError(f"data.crop_scale={list(data.crop_scale)} must be [low, high] with 0 < low <= high <= 1")
    for key in ("include_classes", "exclude_classes", "split_subsets"):
        names = [str(n) for n in data.get(key) or []]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"data.{key}={names} names {', '.join(twice)} more than once: list each class once")
    if data.epoch_images is not None and data.epoch_images < data.batch_size:
        raise ConfigError(f"data.epoch_images={data.epoch_images} is less than one batch (data.batch_size="
                          f"{data.batch_size}): an epoch would train nothing")
    if data.samples_per_class is not None and data.samples_per_class < 1:
        raise ConfigError(f"data.samples_per_class={data.samples_per_class} must be at least 1 (or null: all)")


CLASS_SELECTION_KEYS = ("include_classes", "exclude_classes", "split_file", "split_subsets")


def evaluation_data(saved: dict, overrides: list[str], config_file: str | None = None) -> dict:
    """The data config an evaluation starts from: the training run's, except that the classes are
    chosen afresh when the evaluation names any class-selection key (an ``exclude_classes`` inherited
    from training must not combine with an ``include_classes`` given now), and ``samples_per_class``,
    a training-only limit, never applies."""
    data = dict(saved, samples_per_class=None)
    named = [o.split("=", 1)[0] for o in overrides]
    for layer, _ in _read_yaml(Path(config_file)) if config_file else []:  # inherited files included
        named += [f"data.{k}" for k in (layer.get("data") or {})]
    if any(f"data.{k}" in named for k in CLASS_SELECTION_KEYS):
        data.update({k: None for k in CLASS_SELECTION_KEYS})
    return data


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
