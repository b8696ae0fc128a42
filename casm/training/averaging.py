"""An exponential moving average of the masker's weights: the masker a run validates, saves and exports.

Why: the masker and the classifiers play a game, and the live masker's weights move with every step
against a classifier that moves too, so where a run happens to stop decides much of its LE. The average
over the last ~N steps (``casm.masker_average_steps``; decay ``1 - 1/N``) is the usual remedy for a
generator trained against a moving adversary (an EMA generator in GANs): training itself is unchanged —
the live masker keeps playing — only the masker that is *used* is the average.

The average is kept out of the module's parameters, so a checkpoint has the same layout with or without
it: ``state_dict``'s ``masker.*`` holds the average (what evaluation, export and sanity load), and the
live weights travel in the CASM state for an exact resume (:meth:`MaskerAverage.pack` / ``unpack``).
torch's :class:`~torch.optim.swa_utils.AveragedModel` does the averaging (buffers included).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

PREFIX = "masker."  # the masker's keys in the CASM module's state_dict


class MaskerAverage:
    """The EMA of a masker over about ``steps`` updates; the first update copies the masker."""

    def __init__(self, masker: nn.Module, steps: int) -> None:
        self.steps = steps
        self.average = AveragedModel(masker, multi_avg_fn=get_ema_multi_avg_fn(1.0 - 1.0 / steps), use_buffers=True)
        self.swapped = False  # the masker holds the average (inside swapped_into), the average the live weights

    @property
    def started(self) -> bool:
        return int(self.average.n_averaged) > 0

    def to(self, device: torch.device) -> MaskerAverage:
        self.average.to(device)
        return self

    def update(self, masker: nn.Module) -> None:
        self.average.update_parameters(masker)

    @contextmanager
    def swapped_into(self, masker: nn.Module) -> Iterator[None]:
        """The average's weights in ``masker`` for the block (validation), the live ones back after it."""
        if not self.started:
            yield
            return
        self._swap(masker)
        try:
            yield
        finally:
            self._swap(masker)

    def _swap(self, masker: nn.Module) -> None:
        with torch.no_grad():
            for mine, live in zip(self.average.module.state_dict().values(), masker.state_dict().values()):
                held = live.clone()
                live.copy_(mine)
                mine.copy_(held)
        self.swapped = not self.swapped

    def pack(self, state_dict: dict[str, Tensor]) -> dict:
        """Put the average into a checkpoint's ``state_dict`` (in place); return what restores the rest.
        A checkpoint written inside a validation (an exception there) finds the two exchanged."""
        if not self.started:
            return {}
        held = {PREFIX + k: v.detach().clone() for k, v in self.average.module.state_dict().items()}
        in_module = {k: v for k, v in state_dict.items() if k.startswith(PREFIX)}
        average, live = (in_module, held) if self.swapped else (held, in_module)
        state_dict.update(average)
        return {"live_masker": live, "n_averaged": int(self.average.n_averaged)}

    def unpack(self, state_dict: dict[str, Tensor], packed: dict) -> None:
        """The inverse of :meth:`pack`, before the checkpoint's ``state_dict`` is loaded (resume)."""
        if not packed:
            return
        self.average.module.load_state_dict({k[len(PREFIX):]: v for k, v in state_dict.items()
                                             if k.startswith(PREFIX)})
        self.average.n_averaged.fill_(packed["n_averaged"])
        restore_live_masker(state_dict, packed)


def restore_live_masker(state_dict: dict[str, Tensor], packed: dict) -> None:
    """Put a checkpoint's live masker weights back under ``masker.*`` (resuming with or without an average)."""
    state_dict.update(packed.get("live_masker", {}))
