"""The study report's arithmetic against hand computations (printed t tables, sums done by hand)."""

import math

import pytest

from casm.experiments.statistics import Summary, paired_difference, sd_interval, summarize, t_quantile


@pytest.mark.parametrize("n, table", [(2, 12.706205), (3, 4.302653), (5, 2.776445), (10, 2.262157)])
def test_t_quantile_matches_the_printed_table(n, table):
    assert t_quantile(n) == pytest.approx(table, abs=1e-5)


def test_three_seeds_by_hand():
    s = summarize([0.2, 0.3, 0.4])
    # mean 0.3; deviations -0.1, 0, 0.1 -> variance 0.02 / 2 = 0.01 -> sd 0.1; half = 4.302653 * 0.1 / sqrt(3)
    assert (s.n, s.mean, s.sd) == (3, pytest.approx(0.3), pytest.approx(0.1))
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert (s.low, s.high) == (pytest.approx(0.3 - half, abs=1e-6), pytest.approx(0.3 + half, abs=1e-6))
    assert s.values == (0.2, 0.3, 0.4)
    assert s.text() == "0.300 ± 0.100 [0.052, 0.548]"
    assert s.spread() == "0.300 ± 0.100" and s.spread(1, signed=True) == "+0.3 ± 0.1"


@pytest.mark.parametrize("n, lower, upper", [(3, 0.0506356, 7.377759), (5, 0.4844186, 11.143287)])
def test_sd_interval_uses_the_printed_chi_square_quantiles(n, lower, upper):
    """chi2(n-1) at 0.025 and 0.975 from a printed table: sd * sqrt(df / upper) ... sd * sqrt(df / lower)."""
    low, high = sd_interval(0.039, n)
    assert low == pytest.approx(0.039 * math.sqrt((n - 1) / upper), rel=1e-6)
    assert high == pytest.approx(0.039 * math.sqrt((n - 1) / lower), rel=1e-6)
    assert low < 0.039 < high


def test_five_seeds_cannot_show_a_small_spread():
    """The default run's five seeds (sd 0.039): the sd is anywhere in 0.024-0.113, so 'sd <= 0.03' is
    neither shown nor refuted by them."""
    s = summarize([0.184, 0.238, 0.162, 0.224, 0.258])
    assert s.sd == pytest.approx(0.0394, abs=1e-4)
    assert (round(s.sd_low, 3), round(s.sd_high, 3)) == (0.024, 0.113)
    assert Summary.from_dict(s.as_dict()) == s
    old = {k: v for k, v in s.as_dict().items() if not k.startswith("sd_")}  # a report written before
    assert Summary.from_dict(old).sd_low is None


def test_one_seed_has_no_spread():
    s = summarize([0.25])
    assert (s.sd, s.low, s.high, s.sd_low, s.sd_high) == (None, None, None, None, None)
    assert s.text() == "0.250 (1 seed)"
    assert s.spread() == "0.250" and summarize([-0.25]).spread(signed=True) == "-0.250"


def test_a_non_finite_value_is_refused():
    with pytest.raises(ValueError, match="non-finite"):
        summarize([0.2, float("nan")])


def test_paired_difference_uses_shared_seeds_only():
    variant = {0: 0.5, 1: 0.7, 2: 0.6, 7: 9.0}
    reference = {0: 0.2, 1: 0.3, 2: 0.4, 5: 0.0}
    d = paired_difference(variant, reference)
    # differences 0.3, 0.4, 0.2: mean 0.3, sd 0.1 (as above), the seeds 5 and 7 are unpaired
    assert (d.n, d.mean, d.sd) == (3, pytest.approx(0.3), pytest.approx(0.1))
    assert d.values == pytest.approx((0.3, 0.4, 0.2))
    assert paired_difference({1: 0.1}, {2: 0.2}) is None


def test_pairing_is_tighter_than_the_unpaired_spread():
    """Seeds that move both variants alike: the paired sd is the sd of the differences, not of the values."""
    reference = {0: 0.20, 1: 0.40, 2: 0.60}
    variant = {s: v + 0.1 for s, v in reference.items()}
    assert summarize(list(variant.values())).sd == pytest.approx(0.2)
    assert paired_difference(variant, reference).sd == pytest.approx(0.0, abs=1e-12)
