"""Model-parameter randomization tests (Adebayo et al. 2018, "Sanity Checks for Saliency Maps"; docs/sanity.md).

Cascading randomization: re-initialize a network's layers from the top down, one stage more at a time,
and compare each method's maps with the maps of the trained network. A method whose maps barely change
while the weights that make the decision are random does not explain the decision. Similarity is the
Spearman rank correlation of the pixels and the SSIM of the maps (both per image, then averaged).

The stages: for a classifier ``fc``, ``layer4`` ... ``layer1``, ``stem``; for a masker (standalone: its
head, then the encoder it reads) the head's parts from its output down, then the encoder's stages.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterator

import torch
from torch import Tensor, nn
from torchmetrics.functional import spearman_corrcoef, structural_similarity_index_measure

from casm.baselines import BASELINES
from casm.models.masker import Masker
from casm.models.resnet import ResNetClassifier, ResNetTrunk

Stages = list[tuple[str, list[nn.Module]]]


def _trunk_stages(trunk: ResNetTrunk, prefix: str = "") -> Stages:
    return [(f"{prefix}layer{i}", [getattr(trunk, f"layer{i}")]) for i in (4, 3, 2, 1)] + \
        [(f"{prefix}stem", [trunk.conv1, trunk.bn1])]


def classifier_stages(model: ResNetClassifier) -> Stages:
    """Top-down stages of a casm ResNet classifier."""
    return [("fc", [model.fc])] + _trunk_stages(model.trunk)


def masker_stages(masker: Masker) -> Stages:
    """Top-down stages of a masker: the head's parts from the output back, then its encoder's stages."""
    parts: list[tuple[str, nn.Module]] = []
    for name, child in masker.head.named_children():
        if isinstance(child, (nn.ModuleDict, nn.ModuleList)):
            parts += [(f"head.{name}.{n}", c) for n, c in child.named_children()]
        elif any(p.requires_grad for p in child.parameters()):
            parts.append((f"head.{name}", child))
    stages = [(name, [module]) for name, module in reversed(parts) if list(module.parameters())]
    return stages + (_trunk_stages(masker.encoder, "encoder.") if masker.encoder is not None else [])


def randomize(modules: list[nn.Module], seed: int) -> None:
    """Re-initialize every parameterized layer in ``modules`` (its own ``reset_parameters``, seeded)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in modules:
            for layer in module.modules():
                if hasattr(layer, "reset_parameters"):  # convolutions, linear layers, BatchNorm (statistics too)
                    layer.reset_parameters()


def cascade(model: nn.Module, stages_of: Callable[[nn.Module], Stages], seed: int = 0
            ) -> Iterator[tuple[str, nn.Module]]:
    """``(stage name, model)`` with the top 1, 2, ... stages re-initialized (one copy, randomized further
    at each step; ``model`` itself is untouched)."""
    randomized = copy.deepcopy(model)
    for index, (name, modules) in enumerate(stages_of(randomized)):
        randomize(modules, seed + index)
        yield name, randomized


def similarity(original: Tensor, randomized: Tensor) -> dict[str, float]:
    """Mean over images of the Spearman rank correlation of the pixels and the SSIM of (B, H, W) maps in [0, 1]."""
    a, b = original.float().flatten(1), randomized.float().flatten(1)
    flat_a, flat_b = a + 1e-9 * torch.arange(a.shape[1]), b + 1e-9 * torch.arange(b.shape[1])  # no all-tie columns
    rho = spearman_corrcoef(flat_b.T, flat_a.T)  # (B,): one correlation per image
    ssim = structural_similarity_index_measure(randomized.float()[:, None], original.float()[:, None],
                                                data_range=1.0, reduction="none")
    return {"spearman": float(torch.nan_to_num(rho).mean()), "ssim": float(ssim.mean())}


def cascade_similarities(model: nn.Module, stages_of: Callable[[nn.Module], Stages],
                         explain: Callable[[nn.Module, Tensor], Tensor], images: Tensor, seed: int = 0
                         ) -> list[dict]:
    """For each stage of the cascade: the similarity of ``explain(randomized, images)`` to the trained
    model's maps. ``explain`` returns (B, H, W) maps in [0, 1]."""
    original = explain(model, images)
    return [{"stage": name, **similarity(original, explain(randomized, images))}
            for name, randomized in cascade(model, stages_of, seed)]


def chance_similarity(maps: Tensor) -> dict[str, float]:
    """The similarity of each image's map to the next image's map: the level two unrelated maps of one
    method reach (coarse maps share their upsampling's smooth shape), the floor a cascade can fall to."""
    return similarity(maps, maps.roll(1, dims=0))


def run_cascades(classifier: nn.Module, masker: Masker, images: Tensor, methods: tuple[str, ...],
                 slow_images: int = 8, seed: int = 0) -> tuple[dict[str, list[dict]], dict[str, dict[str, float]]]:
    """The classifier's cascade for each CAM method, and the masker's own cascade (its standalone copy:
    head, then the encoder it reads); Score-CAM on the first ``slow_images`` images. Returns the curves and,
    per method, its :func:`chance_similarity` on the trained model."""
    def cam(method: str) -> Callable[[nn.Module, Tensor], Tensor]:
        def explain(model: nn.Module, x: Tensor) -> Tensor:
            with BASELINES[method](model, "trunk.layer4") as m:
                return m(x).detach()
        return explain

    curves, chance = {}, {}
    for method in methods:
        x = images[:slow_images] if method == "scorecam" else images
        curves[method] = cascade_similarities(classifier, classifier_stages, cam(method), x, seed)
        chance[method] = chance_similarity(cam(method)(classifier, x))

    def mask(model: nn.Module, x: Tensor) -> Tensor:
        with torch.no_grad():
            return model(x)[:, 0]

    curves["casm (masker)"] = cascade_similarities(masker, masker_stages, mask, images, seed)
    chance["casm (masker)"] = chance_similarity(mask(masker, images))
    return curves, chance


def plot_cascades(curves: dict[str, list[dict]], path, chance: dict[str, dict[str, float]] | None = None) -> None:
    """Spearman and SSIM against the number of stages re-initialized, one line per method (the masker's
    dashed), each method's chance level (:func:`chance_similarity`) as a dotted line of its colour."""
    import matplotlib  # deferred: matplotlib's import is slow and only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, metric in zip(axes, ("spearman", "ssim")):
        for index, (method, rows) in enumerate(curves.items()):
            line, = ax.plot(range(1, len(rows) + 1), [r[metric] for r in rows], marker="o", label=method,
                            linestyle="--" if method.startswith("casm") else "-", linewidth=4 if index == 0 else 1.5)
            if chance and method in chance:
                ax.axhline(chance[method][metric], color=line.get_color(), linestyle=":", linewidth=1)
        ax.set_xlabel("stages re-initialized, from the top")
        ax.set_title(f"{metric} with the trained model's maps")
        ax.axhline(0, color="grey", linewidth=0.5)
    axes[0].set_ylabel("similarity (1 = unchanged)")
    axes[0].legend(fontsize=8)
    fig.suptitle("classifier: fc, layer4 ... stem; masker: head ... encoder; dotted: two different images' maps",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
