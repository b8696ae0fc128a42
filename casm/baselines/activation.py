"""Gradient-free CAMs: CAM, Score-CAM, Ablation-CAM and EigenCAM (docs/evaluation.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from casm.baselines.base import CAMMethod, logits_of
from casm.errors import UserError


def _final_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError("CAM needs a global-average-pooling + linear head; the model has no nn.Linear")
    return linears[-1]


class CAM(CAMMethod):
    """CAM (Zhou et al., 2016, arXiv:1512.04150): ``M = sum_k w^c_k A^k`` with ``w^c`` the linear
    head's weights; only for GAP + linear heads, with the target layer feeding the pooling."""

    name = "cam"

    def channel_weights(self, activation, logits, targets, images):
        fc = _final_linear(self.model)
        if fc.in_features != activation.shape[1]:
            raise UserError(f"CAM: layer {self.target_layer!r} has {activation.shape[1]} channels but the head "
                            f"takes {fc.in_features}; use the layer that feeds the global pooling")
        return fc.weight[targets].detach()


class ChannelPassCAM(CAMMethod):
    """A CAM that scores each channel by an extra forward pass per (image, channel): ``chunk_size`` pairs
    run per pass, so memory stays bounded for any batch."""

    def __init__(self, model: nn.Module, target_layer: str | None = None, chunk_size: int = 256,
                 normalize: bool = True) -> None:
        super().__init__(model, target_layer, normalize)
        self.chunk_size = chunk_size


class ScoreCAM(ChannelPassCAM):
    """Score-CAM (Wang et al., 2020, arXiv:1910.01279): each channel, upsampled and min-max normalized,
    masks the image; its weight is the softmax over channels of the target logit on that masked image.

    K extra forward passes per image; here all (image, channel) pairs of a batch run in chunks of
    ``chunk_size``, each chunk upsamples only its own channels (memory stays bounded), and channels whose
    masks are certain to be equal share one pass, with identical results: min-max normalization removes
    any positive scale and offset, and bilinear upsampling commutes with both, so two channels of an image
    whose maps are ``a·A + b`` of each other (a > 0) mask it identically. All constant channels (common
    after a ReLU: all zeros) give the same all-zero mask, and a channel with one active position (common on
    small maps) the same bump as every other channel active only there."""

    name = "scorecam"

    def channel_weights(self, activation: Tensor, logits: Tensor, targets: Tensor, images: Tensor) -> Tensor:
        batch, channels = activation.shape[:2]
        size = images.shape[-2:]
        flat = activation.detach().flatten(0, 1)[:, None]  # (B*K, 1, h, w)
        image_of = torch.arange(batch * channels, device=images.device) // channels
        scores = torch.empty(batch * channels, device=images.device)
        values = flat.flatten(1).float()
        span = values.amax(dim=1) - values.amin(dim=1)
        active = (span > 0).nonzero()[:, 0]
        run, same_as = _distinct_masks(values[active], span[active], image_of[active])
        with self._activation_kept():
            if len(active) < batch * channels:  # the constant channels' masked image: all zeros
                zero_logits = logits_of(self.model(torch.zeros_like(images[:1])))[0].float()  # (num_classes,)
                scores[:] = zero_logits[targets[image_of]]
            distinct = active[run]
            distinct_scores = torch.empty(len(distinct), device=images.device)
            for start in range(0, len(distinct), self.chunk_size):
                idx = distinct[start: start + self.chunk_size]
                # the reference uses align_corners=True here (UpsamplingBilinear2d)
                up = F.interpolate(flat[idx], size=size, mode="bilinear", align_corners=True)  # (n, 1, H, W)
                low = up.flatten(1).min(dim=1).values[:, None, None, None]
                high = up.flatten(1).max(dim=1).values[:, None, None, None]
                masks = (up - low) / (high - low + 1e-8)
                out = logits_of(self.model(images[image_of[idx]] * masks))
                distinct_scores[start: start + len(idx)] = out.gather(1, targets[image_of[idx]][:, None])[:, 0].float()
            scores[active] = distinct_scores[same_as]
        return torch.softmax(scores.view(batch, channels), dim=1)


def _distinct_masks(values: Tensor, span: Tensor, image_of: Tensor) -> tuple[Tensor, Tensor]:
    """For (n, h*w) non-constant channel maps: the rows to run (one per distinct (image, normalized map))
    and, for every row, which of those runs it shares. Rows are shared only when their normalized maps are
    bit-equal, so a shared mask differs from the one a channel would make itself by float rounding at most."""
    normalized = (values - values.amin(dim=1, keepdim=True)) / span[:, None]
    keys = torch.cat([image_of[:, None].to(normalized.dtype), normalized], dim=1)
    _, same_as = torch.unique(keys, dim=0, return_inverse=True)
    first = torch.full((int(same_as.max()) + 1 if len(same_as) else 0,), len(same_as), device=values.device)
    first = first.scatter_reduce(0, same_as, torch.arange(len(same_as), device=values.device), reduce="amin")
    return first, same_as


class AblationCAM(ChannelPassCAM):
    """Ablation-CAM (Desai & Ramaswamy, WACV 2020): a channel's weight is the relative drop of the target
    logit when that channel is set to zero, ``w_k = (y^c - y^c_{A^k = 0}) / y^c``.

    K extra forward passes per image, with the target layer's output replaced by the ablated copy; as
    in Score-CAM, all (image, channel) pairs of a batch run in chunks, and channels that are already zero
    everywhere are not run (ablating them changes nothing: weight 0). The grad-cam package also sets a
    channel to zero when the layer's minimum is 0 (any layer ending in a ReLU) and to a large negative
    value otherwise; here it is always zero, the paper's definition."""

    name = "ablationcam"

    def channel_weights(self, activation: Tensor, logits: Tensor, targets: Tensor, images: Tensor) -> Tensor:
        if self._calls > 1:
            raise UserError(f"Ablation-CAM: the network calls {self.target_layer!r} {self._calls} times per forward "
                            f"pass, and replacing its output would edit every call; give a target layer it calls once")
        batch, channels = activation.shape[:2]
        activation = activation.detach()
        clean = logits.gather(1, targets[:, None])[:, 0].float()  # (B,) y^c
        ablated = clean.repeat_interleave(channels)  # (B*K,), a zero channel leaves y^c unchanged
        active = (activation.flatten(2).abs().amax(dim=2).flatten() > 0).nonzero()[:, 0]
        replacement: list[Tensor] = []
        hook = self.layer.register_forward_hook(lambda module, inputs, output: replacement[0])
        try:
            with self._activation_kept():
                for start in range(0, len(active), self.chunk_size):
                    idx = active[start: start + self.chunk_size]
                    image_of, channel_of = idx // channels, idx % channels
                    copies = activation[image_of].clone()
                    copies[torch.arange(len(idx), device=idx.device), channel_of] = 0
                    replacement[:] = [copies]
                    out = logits_of(self.model(images[image_of]))
                    ablated[idx] = out.gather(1, targets[image_of][:, None])[:, 0].float()
        finally:
            hook.remove()
        denominator = torch.where(clean.abs() < 1e-12, torch.full_like(clean, 1e-12), clean)[:, None]  # y^c = 0
        return (clean[:, None] - ablated.view(batch, channels)) / denominator


class EigenCAM(CAMMethod):
    """EigenCAM (Muhammad & Yeasin, IJCNN 2020, arXiv:2008.00299): the activation projected on its first
    principal component, ``M = (A - mean) v_1`` over the positions; class-agnostic and gradient-free.

    A principal component's sign is arbitrary (LAPACK decides it, and the grad-cam package keeps
    whatever it returns, so its map can be the ReLU of the wrong half). Here the sign is chosen so the
    projection rises with the total activation (``sum_k A^k``): the map marks where the layer fires."""

    name = "eigencam"

    def saliency(self, activation: Tensor, logits: Tensor, targets: Tensor, images: Tensor) -> Tensor:
        batch, _, height, width = activation.shape
        positions = activation.detach().float().flatten(2).transpose(1, 2)  # (B, h*w, K)
        centred = positions - positions.mean(dim=1, keepdim=True)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        projection = (centred @ vh[:, 0, :, None])[..., 0]  # (B, h*w)
        sign = torch.sign((projection * positions.sum(dim=2)).sum(dim=1, keepdim=True))
        return (projection * torch.where(sign == 0, 1.0, sign)).view(batch, height, width)
