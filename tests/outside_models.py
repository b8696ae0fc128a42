"""Tiny classifiers from "outside casm" for the tests: built by name, as a user's own package would be."""

from torch import nn


def tiny_cnn(num_classes: int = 10, channels: int = 8) -> nn.Module:
    """A plain conv net with BatchNorm and dropout (no casm parts), returning logits."""
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, stride=2, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
        nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(channels, num_classes),
    )


class TupleNet(nn.Module):
    """Returns (logits, extra), as some models do; built through a classmethod (``module:Class.build``)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = tiny_cnn(num_classes)

    def forward(self, x):
        return self.body(x), x.mean()

    @classmethod
    def build(cls, num_classes: int = 10) -> "TupleNet":
        return cls(num_classes)


def tiny_pyramid(channels: int = 8) -> nn.Module:
    """Five stages halving the resolution each (a stem at H/2 where a ResNet's sits at H/4), then a classifier
    head: an encoder from outside casm whose stages are read by module name ('0' ... '4')."""
    def stage(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())

    widths = [channels * 2 ** min(i, 3) for i in range(5)]
    return nn.Sequential(stage(3, widths[0]), *[stage(widths[i], widths[i + 1]) for i in range(4)],
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], 10))
