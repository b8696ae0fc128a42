"""The sanity checks over several runs: mean ± sd of every number, and the per-run count of cascade
stages above chance, against hand computations on constructed reports; the command on two runs."""

from __future__ import annotations

import json
import shutil

import pytest

from casm.errors import UserError
from casm.experiments.sanity_runs import summarize_sanity, summary_tables


def _report(l1: float, spearman: list[float], chance: float, attack: str = "T1", stages=("fc", "layer4")) -> dict:
    return {"checkpoint": f"run{l1}", "images": 8,
            "attacks": [{"attack": attack, "accuracy_before": 0.9, "accuracy_after": 0.9, "max_logit_change": l1 / 100,
                         "methods": {"gradcam": {"l1_to_target": l1, "l1_original_to_target": 0.5, "images": 8}}}],
            "randomization": {"gradcam": [{"stage": s, "spearman": v, "ssim": 0.5} for s, v in zip(stages, spearman)]},
            "randomization_chance": {"gradcam": {"spearman": chance, "ssim": 0.4}}}


def test_every_number_is_a_mean_and_sd_over_the_runs_by_hand():
    summary = summarize_sanity([_report(0.0, [0.9, 0.1], 0.5), _report(0.2, [0.3, 0.2], 0.6),
                                _report(0.1, [0.8, 0.7], 0.4)])
    l1 = summary["attacks"][0]["methods"]["gradcam"]["l1_to_target"]
    assert l1["mean"] == pytest.approx(0.1) and l1["sd"] == pytest.approx(0.1) and l1["values"] == [0.0, 0.2, 0.1]
    assert summary["attacks"][0]["max_logit_change"] == pytest.approx(0.002)  # the largest, not a mean
    fc, layer4 = summary["randomization"]["gradcam"]
    assert fc["spearman"]["mean"] == pytest.approx(2.0 / 3) and fc["ssim"]["sd"] == pytest.approx(0.0)
    # each run against its own chance level: fc 0.9 > 0.5, 0.3 < 0.6, 0.8 > 0.4; layer4 only 0.7 > 0.4
    assert (fc["above_chance"], layer4["above_chance"]) == (2, 1)
    assert summary["randomization_chance"]["gradcam"]["spearman"]["mean"] == pytest.approx(0.5)
    text = summary_tables(summary)
    assert "0.100 ± 0.100 (0.500 ± 0.000)" in text and "fc: 0.67 ± 0.32 / 0.50 ± 0.00, 2/3 above" in text


@pytest.mark.parametrize("second, message", [
    (_report(0.1, [0.1, 0.1], 0.5, attack="T2"), "different attacks"),
    (_report(0.1, [0.1, 0.1], 0.5, stages=("fc", "layer3")), "one architecture"),
])
def test_runs_measured_differently_are_refused(second, message):
    with pytest.raises(UserError, match=message):
        summarize_sanity([_report(0.0, [0.2, 0.1], 0.5), second])


def test_one_report_is_no_spread():
    with pytest.raises(UserError, match="at least two"):
        summarize_sanity([_report(0.0, [0.2, 0.1], 0.5)])


def test_the_command_on_two_runs_writes_each_report_and_the_summary(trained_checkpoint, tmp_path, capsys):
    from casm.cli import main

    second = tmp_path / "copy"  # a second run: the same weights in another run folder
    shutil.copytree(trained_checkpoint.parent.parent, second, ignore=shutil.ignore_patterns("sanity*", "eval*"))
    checkpoints = [str(trained_checkpoint), str(second / "checkpoints" / "last.ckpt")]
    out = tmp_path / "summary"
    assert main(["sanity", "--checkpoint", *checkpoints, "--out", str(out), "--images", "4", "--slow-images", "1",
                 "--attacks", "T1", "--device", "cpu"]) == 0
    summary = json.loads((out / "sanity_over_runs.json").read_text())
    assert (second / "sanity" / "sanity.json").is_file() and (out / "sanity_over_runs.md").is_file()
    l1 = summary["attacks"][0]["methods"]["gradcam"]["l1_to_target"]
    assert l1["n"] == 2 and l1["sd"] == pytest.approx(0.0, abs=1e-6)  # the same weights twice
    assert "2 runs" in capsys.readouterr().out
    assert main(["sanity", "--checkpoint", checkpoints[0], checkpoints[0], "--images", "4"]) == 2
    assert "same run" in capsys.readouterr().err
    assert main(["sanity", "--checkpoint", checkpoints[0], str(tmp_path / "nothing.ckpt")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
