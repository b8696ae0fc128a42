"""Rankings against hand computations."""

import pytest

from casm.evaluation.ranking import rank_methods, ranking_markdown

RESULTS = {  # le: lower is better; deletion: lower is better; insertion: higher is better
    "a": {"le": 0.2, "deletion": 0.30, "insertion": 0.9},
    "b": {"le": 0.4, "deletion": 0.20, "insertion": 0.8},
    "c": {"le": 0.4, "deletion": 0.10, "insertion": 0.7},
    "centre_box": {"le": 0.7, "deletion": 0.5, "insertion": 0.5},  # a yardstick, not ranked
}


def test_ranks_ties_mean_rank_and_best_by_hand():
    r = rank_methods(RESULTS)
    assert r["metrics"] == ["le", "deletion", "insertion"]
    assert r["ranks"]["a"] == {"le": 1, "deletion": 3, "insertion": 1}
    assert r["ranks"]["b"]["le"] == r["ranks"]["c"]["le"] == 2.5  # tied: the mean of ranks 2 and 3
    assert r["mean_rank"] == pytest.approx({"a": 5 / 3, "b": (2.5 + 2 + 2) / 3, "c": (2.5 + 1 + 3) / 3})
    assert r["best"] == {"le": ["a"], "deletion": ["c"], "insertion": ["a"]}
    assert "centre_box" not in r["ranks"]


def test_opposite_orders_are_reported_as_disagreements():
    """deletion orders a, b, c as 3, 2, 1 and insertion as 1, 2, 3: Kendall tau -1; le vs deletion:
    pairs (a,b) and (a,c) discordant, (b,c) tied on le -> tau_b = -2 / sqrt(2 * 3)."""
    r = rank_methods(RESULTS)
    found = {(a, b): tau for a, b, tau in r["disagreements"]}
    assert found[("deletion", "insertion")] == pytest.approx(-1)
    assert found[("le", "deletion")] == pytest.approx(-2 / 6 ** 0.5, abs=1e-3)
    assert ("le", "insertion") not in found
    text = ranking_markdown(r)
    assert "| a | 1.67 |" in text and "deletion vs insertion (τ -1.00)" in text


def test_a_metric_some_method_lacks_is_not_ranked():
    r = rank_methods({"a": {"le": 0.2, "pxap": 50.0}, "b": {"le": 0.3}})
    assert r["metrics"] == ["le"] and r["disagreements"] == []
