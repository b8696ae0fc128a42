"""The masker's moving average (casm.masker_average_steps): arithmetic, swaps, checkpoint layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from casm.checkpoints import read_checkpoint
from casm.trained_run import read_run
from casm.training.averaging import MaskerAverage, restore_live_masker
from casm.training.module import CASMModule
from casm.training.run import train


def _masker(value: float) -> nn.Module:
    model = nn.Sequential(nn.Linear(1, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
        model[1].running_mean.fill_(value)
    return model


def test_the_average_is_the_exponential_moving_average_by_hand():
    masker = _masker(1.0)
    average = MaskerAverage(masker, steps=4)  # decay 0.75
    assert not average.started
    expected = None
    for value in (1.0, 3.0, 7.0):
        masker.load_state_dict(_masker(value).state_dict())
        average.update(masker)
        expected = value if expected is None else 0.75 * expected + 0.25 * value  # the first update copies
    assert expected == pytest.approx(0.75 * (0.75 * 1 + 0.25 * 3) + 0.25 * 7)
    for tensor in (average.average.module[0].weight, average.average.module[1].running_mean):
        assert torch.allclose(tensor, torch.full_like(tensor, expected))  # buffers are averaged too


def test_swapped_into_exchanges_the_weights_for_the_block_and_back():
    masker = _masker(1.0)
    average = MaskerAverage(masker, steps=2)
    with average.swapped_into(masker):  # nothing averaged yet: the live weights stay
        assert masker[0].weight.item() == 1.0
    average.update(masker)
    masker.load_state_dict(_masker(5.0).state_dict())
    with average.swapped_into(masker):
        assert masker[0].weight.item() == 1.0 and average.swapped
    assert masker[0].weight.item() == 5.0 and not average.swapped


@pytest.mark.parametrize("inside_validation", [False, True])
def test_pack_puts_the_average_under_masker_and_unpack_restores_the_live_weights(inside_validation):
    masker = _masker(1.0)
    average = MaskerAverage(masker, steps=2)
    average.update(masker)
    masker.load_state_dict(_masker(5.0).state_dict())
    with average.swapped_into(masker) if inside_validation else torch.no_grad():
        state = {"masker." + k: v.clone() for k, v in masker.state_dict().items()}
        state["classifier.w"] = torch.ones(1)
        packed = average.pack(state)
    assert state["masker.0.weight"].item() == 1.0 and packed["live_masker"]["masker.0.weight"].item() == 5.0
    fresh = MaskerAverage(_masker(0.0), steps=2)
    fresh.unpack(state, packed)
    assert state["masker.0.weight"].item() == 5.0 and fresh.started
    assert fresh.average.module[0].weight.item() == 1.0
    without = {"masker.0.weight": torch.ones(1)}
    restore_live_masker(without, packed)  # resumed with the average turned off: trains on the live weights
    assert without["masker.0.weight"].item() == 5.0


def test_a_run_saves_validates_and_exports_the_average(tiny_cfg, monkeypatch):
    validated = []
    step = CASMModule.validation_step

    def recording(self, batch, batch_idx):
        validated.append({k: v.clone() for k, v in self.masker.state_dict().items()})
        return step(self, batch, batch_idx)

    monkeypatch.setattr(CASMModule, "validation_step", recording)
    run = train(tiny_cfg("casm.masker_average_steps=4", "trainer.max_epochs=2"))
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    live = ckpt["casm_state"]["masker_average"]["live_masker"]
    assert ckpt["casm_state"]["masker_average"]["n_averaged"] == 8  # 64 images / 16, 2 epochs
    moved = [k for k, v in live.items() if v.is_floating_point() and not torch.equal(v, ckpt["state_dict"][k])]
    assert moved  # the saved masker is not the live one
    saved = read_run(run / "checkpoints" / "last.ckpt")
    assert all(torch.equal(v, ckpt["state_dict"]["masker." + k]) for k, v in saved.masker.state_dict().items())
    assert all(torch.equal(v, ckpt["state_dict"]["masker." + k]) for k, v in validated[-1].items())
