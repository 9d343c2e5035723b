"""stats.py's paired comparison: McNemar's exact p-value against a brute-force binomial sum, a log-space sum
and textbook values; Newcombe's paired interval against the published examples of Newcombe (1998) and of
Fagerland, Lydersen & Laake (2017); and the properties a reader relies on (the interval holds the estimate,
stays in [-1, 1], narrows with more problems, and `significant` agrees with it)."""

import math

import pytest

import stats


def paired_lists(both: int, only_first: int, only_second: int, neither: int) -> tuple[list[bool], list[bool]]:
    """Two stages' right/wrong lists on the same problems, built from the four cells of the paired table."""
    first = [True] * both + [True] * only_first + [False] * only_second + [False] * neither
    second = [True] * both + [False] * only_first + [True] * only_second + [False] * neither
    return first, second


# ---------------------------------------------------------------------------------------------------------
# McNemar's exact test
# ---------------------------------------------------------------------------------------------------------


def test_mcnemar_p_value_matches_a_brute_force_binomial_sum_for_every_table_up_to_twelve():
    # Oracle: the chance, under Binomial(b + c, 1/2), of a split at least as far from even as the one seen,
    # on either side, summed term by term in float64 over every outcome k.
    for b in range(13):
        for c in range(13):
            n = b + c
            lopsided = [k for k in range(n + 1) if abs(2 * k - n) >= abs(b - c)]
            expected = sum(math.comb(n, k) * 0.5**n for k in lopsided)
            assert stats.mcnemar_exact(b, c) == pytest.approx(min(1.0, expected), rel=1e-12), (b, c)


def test_mcnemar_p_value_matches_textbook_values():
    assert stats.mcnemar_exact(0, 5) == 0.0625  # 2 / 2^5: five wins of five is not significant at 5%
    assert stats.mcnemar_exact(1, 9) == 0.021484375  # 2 (1 + 9) / 2^10
    # Cavo et al. (2012) as analysed in Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency
    # Tables" (2017), chapter 8: the McNemar exact conditional test gives P = 0.052479 (the value checked by
    # the tests of the R package contingencytables, tests/testthat/test-ch8.R).
    assert stats.mcnemar_exact(6, 16) == pytest.approx(0.052479, abs=5e-7)


def test_mcnemar_p_value_is_symmetric_in_b_and_c():
    for b, c in [(0, 3), (2, 11), (7, 30), (150, 190)]:
        assert stats.mcnemar_exact(b, c) == stats.mcnemar_exact(c, b)


def test_mcnemar_p_value_is_one_when_the_stages_split_evenly_or_never_disagree():
    assert stats.mcnemar_exact(0, 0) == 1.0
    for k in (1, 5, 40, 1000):
        assert stats.mcnemar_exact(k, k) == 1.0


def test_mcnemar_p_value_stays_exact_for_four_thousand_discordant_problems():
    # Oracle: the same tail summed in log space (lgamma for log C(n, k), then log-sum-exp), which neither
    # overflows nor underflows. Term by term in float64, C(4000, k) overflows and 0.5**4000 underflows to 0.
    def log_space_p(b: int, c: int) -> float:
        n = b + c
        logs = [math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2)
                for k in range(min(b, c) + 1)]
        top = max(logs)
        return min(1.0, 2 * math.exp(top + math.log(sum(math.exp(x - top) for x in logs))))

    for b, c in [(1950, 2050), (1800, 2200), (1700, 2300)]:
        p = stats.mcnemar_exact(b, c)
        assert p > 0.0
        assert p == pytest.approx(log_space_p(b, c), rel=1e-9), (b, c)


def test_mcnemar_refuses_negative_counts():
    with pytest.raises(ValueError, match="non-negative"):
        stats.mcnemar_exact(-1, 3)


# ---------------------------------------------------------------------------------------------------------
# Newcombe's interval of the paired difference
# ---------------------------------------------------------------------------------------------------------

# Newcombe (1998), "Improved confidence intervals for the difference between binomial proportions based on
# paired data", Statistics in Medicine 17:2635-2650: the method 10 column of the paper's table of examples
# (95%, four decimals). Cells (e, f, g, h) are Newcombe's: both positive, only the first positive, only the
# second positive, neither; his difference is (f - g) / n. Values as reprinted in public test suites of
# Newcombe's method; this code matches every row to 1e-4 (the paper rounds to four decimals).
NEWCOMBE_1998_METHOD_10 = [
    ((36, 12, 2, 0), (0.0569, 0.3404)),
    ((20, 12, 2, 16), (0.0562, 0.3292)),
    ((18, 12, 2, 18), (0.0562, 0.3290)),
    ((36, 14, 0, 0), (0.1528, 0.4167)),
    ((35, 14, 0, 1), (0.1461, 0.4175)),
    ((18, 14, 0, 18), (0.1441, 0.3963)),
    ((2, 97, 1, 0), (0.8721, 0.9854)),
    ((1, 97, 1, 1), (0.8736, 0.9850)),
    ((0, 29, 1, 0), (0.6666, 0.9882)),
    ((2, 98, 0, 0), (0.9178, 0.9945)),
    ((1, 98, 0, 1), (0.9171, 0.9916)),
    ((0, 30, 0, 0), (0.8395, 1.0000)),
    ((54, 0, 0, 0), (-0.0664, 0.0664)),
]


@pytest.mark.parametrize("cells, interval", NEWCOMBE_1998_METHOD_10)
def test_the_interval_reproduces_newcombes_published_examples(cells, interval):
    e, f, g, h = cells
    # Newcombe's difference is first minus second; ours is second minus first, so his first stage is our
    # second: his f (only his first positive) is our "only the second right".
    first, second = paired_lists(both=e, only_first=g, only_second=f, neither=h)
    result = stats.paired_difference(first, second)
    assert result["diff"] == pytest.approx((f - g) / (e + f + g + h))
    assert result["lo"] == pytest.approx(interval[0], abs=1e-4)
    assert result["hi"] == pytest.approx(interval[1], abs=1e-4)


def test_the_interval_reproduces_the_contingency_tables_textbook_example():
    # Cavo et al. (2012), complete response before and after consolidation therapy, table [[59, 6], [16, 80]],
    # in Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables" (2017), chapter 8: the
    # Newcombe square-and-add interval is -0.0621 (95% CI -0.1186 to -0.0046), as checked by the tests of
    # the R package contingencytables (tests/testthat/test-ch8.R). Their difference is row 1 minus column 1,
    # (6 - 16) / 161: our second stage is their "before" (row), our first their "after" (column).
    first, second = paired_lists(both=59, only_first=16, only_second=6, neither=80)
    result = stats.paired_difference(first, second)
    assert result["diff"] == pytest.approx(-0.0621, abs=5e-5)
    assert result["lo"] == pytest.approx(-0.1186, abs=5e-5)
    assert result["hi"] == pytest.approx(-0.0046, abs=5e-5)
    assert result["p"] == pytest.approx(0.052479, abs=5e-7) and result["significant"]


def test_the_result_counts_each_stage_and_the_discordant_problems():
    first, second = paired_lists(both=7, only_first=3, only_second=5, neither=9)
    result = stats.paired_difference(first, second)
    assert (result["n"], result["first_correct"], result["second_correct"]) == (24, 10, 12)
    assert (result["b"], result["c"]) == (3, 5)
    assert result["diff"] == pytest.approx(2 / 24)
    assert result["p"] == stats.mcnemar_exact(3, 5)


@pytest.mark.parametrize("cells", [(0, 0, 0, 5), (5, 0, 0, 0), (0, 5, 0, 0), (0, 0, 5, 0), (1, 0, 9, 0),
                                   (3, 4, 2, 1), (40, 1, 1, 40), (0, 1, 0, 0), (90, 0, 10, 0), (2, 30, 0, 1)])
def test_the_interval_contains_the_difference_and_stays_within_minus_one_and_one(cells):
    result = stats.paired_difference(*paired_lists(*cells))
    assert -1.0 <= result["lo"] <= result["diff"] <= result["hi"] <= 1.0


def test_swapping_the_stages_negates_the_difference_and_mirrors_the_interval():
    first, second = paired_lists(both=20, only_first=4, only_second=11, neither=15)
    forward = stats.paired_difference(first, second)
    backward = stats.paired_difference(second, first)
    assert backward["diff"] == pytest.approx(-forward["diff"])
    assert backward["lo"] == pytest.approx(-forward["hi"]) and backward["hi"] == pytest.approx(-forward["lo"])
    assert (backward["b"], backward["c"], backward["p"]) == (forward["c"], forward["b"], forward["p"])


def test_the_interval_narrows_as_the_number_of_problems_grows():
    widths = []
    for scale in (1, 4, 16, 64):
        result = stats.paired_difference(*paired_lists(20 * scale, 4 * scale, 8 * scale, 18 * scale))
        widths.append(result["hi"] - result["lo"])
    assert all(wide > narrow for wide, narrow in zip(widths, widths[1:]))
    assert widths[-1] < widths[0] / 6  # roughly 1/sqrt(n): 64 times the problems, about 1/8 the width


def test_significant_flips_once_the_interval_stops_covering_zero():
    # The docstring's worked example: the same 60% -> 65% on 200 problems, two different pairings.
    traded = stats.paired_difference(*paired_lists(both=100, only_first=20, only_second=30, neither=50))
    assert traded["lo"] < 0 < traded["hi"] and not traded["significant"]
    assert traded["p"] == pytest.approx(0.2026, abs=1e-4)
    kept = stats.paired_difference(*paired_lists(both=120, only_first=0, only_second=10, neither=70))
    assert kept["lo"] > 0 and kept["significant"]
    assert kept["p"] == 2 / 1024
    worse = stats.paired_difference(*paired_lists(both=120, only_first=10, only_second=0, neither=70))
    assert worse["hi"] < 0 and worse["significant"]
    # Adding wins one at a time for the second stage: significant turns on once and stays on, exactly when
    # the lower limit crosses 0.
    flags = [stats.paired_difference(*paired_lists(40, 0, wins, 40)) for wins in range(8)]
    assert [r["significant"] for r in flags] == [r["lo"] > 0 for r in flags]
    assert flags[0]["significant"] is False and flags[-1]["significant"] is True
    assert sorted(r["significant"] for r in flags) == [r["significant"] for r in flags]


def test_unequal_lengths_or_empty_results_raise_a_clear_error():
    with pytest.raises(ValueError, match="one entry per problem"):
        stats.paired_difference([True, False], [True])
    with pytest.raises(ValueError, match="empty"):
        stats.paired_difference([], [])
