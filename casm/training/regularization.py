"""lambda_R: the weight of the mask-area (L1) term, fixed or adapted to a target area (docs/training.md)."""

from __future__ import annotations


class LambdaController:
    """Fixed lambda_R ("paper" mode) or, with ``target_area``, an integral controller.

    In target-area mode, after each step ``lambda_R <- max(0, lambda_R + lr * (mean_mask - target))``:
    the dual ascent step of "minimize the masker loss subject to mean(mask) = target". Masks larger
    than the target raise the penalty, smaller ones lower it, so no per-dataset search is needed.
    """

    def __init__(self, value: float, target_area: float | None = None, lr: float = 0.05) -> None:
        self.value = float(value)
        self.target_area = target_area
        self.lr = lr

    @property
    def adaptive(self) -> bool:
        return self.target_area is not None

    def update(self, mean_mask: float) -> None:
        if self.adaptive:
            self.value = max(0.0, self.value + self.lr * (mean_mask - self.target_area))

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
