"""Statistics the evaluations report: a proportion's confidence interval, the pass@k estimator, and the paired
comparison of two stages on the same held-out problems (McNemar's exact test and Newcombe's interval of the
difference). A room: eval.py and benchmarks.py import it, so every interval in the project is computed one way.
"""

from __future__ import annotations

import math


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% confidence interval of a binomial proportion (Wilson score: sane at 0% and 100%, unlike +-2se).

    Each held-out problem is a coin flip with the model's unknown accuracy p; the interval holds every p
    for which the observed p_hat = successes / n is within z standard errors, with the standard error
    sqrt(p (1 - p) / n) taken at that p, not at p_hat. Solving that quadratic for p gives the centre and
    half-width below. The textbook p_hat +- z sqrt(p_hat (1 - p_hat) / n) has zero width at 0 of 10
    (as if 0% were certain) and can leave [0, 1]; Wilson's centre is pulled toward 1/2 by z^2 / 2n.
    Examples: 0 of 10 -> (0.0, 0.28); 5 of 10 -> (0.24, 0.76); 41 of 100 -> (0.32, 0.51).
    Two stages whose intervals overlap widely are not shown apart by this many problems: use more.
    """
    if n == 0:
        return 0.0, 1.0  # no evidence: every accuracy is possible
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)  # p_hat shrunk toward 1/2, more so for small n
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)  # clamps only float rounding at 0 and n


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem from n samples of which c passed (Chen et al. 2021, section 2.1).

    pass@k = 1 - C(n-c, k) / C(n, k): the chance that k of the n samples, drawn without replacement,
    include a passing one. The product form avoids the huge binomials: C(n-c, k) / C(n, k) =
    prod_{i=n-c+1}^{n} (1 - k/i).
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0  # every draw of k includes a passing sample
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


# ---------------------------------------------------------------------------------------------------------
# Paired comparisons: two stages graded on the same held-out problems
# ---------------------------------------------------------------------------------------------------------


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts of a paired comparison.

    b = problems the first stage solved and the second did not, c = the reverse. Problems both stages
    solved (or both missed) say nothing about which is better, so the test looks only at the b + c
    problems where they disagree. If the stages were equally good, each of those would be equally likely
    to fall on either side: b would be Binomial(b + c, 1/2). The p-value is the chance of a split at least
    as lopsided as the one seen, on either side: p = min(1, 2 P[X <= min(b, c)]).
    Examples: b=0, c=5 -> 2/32 = 0.0625 (five wins out of five is not yet significant at 5%);
    b=1, c=9 -> 2 * 10/1024 = 0.0215; b=c -> 1.0.

    The sum is done in integers and divided once: C(n, k) / 2^n for n in the thousands underflows or
    overflows a float when taken term by term, while Python's int / int is correctly rounded.
    """
    if b < 0 or c < 0:
        raise ValueError(f"McNemar needs non-negative discordant counts, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0  # the stages never disagree: no evidence either way
    # Sum C(n, 0) + ... + C(n, m) with the recurrence C(n, k+1) = C(n, k) (n - k) / (k + 1), exact in ints.
    term, tail = 1, 1
    for k in range(min(b, c)):
        term = term * (n - k) // (k + 1)
        tail += term
    return min(1.0, 2 * tail / 2**n)  # doubling the one tail makes it two-sided; b == c would give > 1


def paired_difference(first: list[bool], second: list[bool], z: float = 1.96) -> dict:
    """Compare two stages graded on the same problems: accuracy difference, its 95% interval, McNemar's p.

    first[i] and second[i] say whether each stage solved problem i. Returns n, first_correct,
    second_correct, diff (second accuracy - first accuracy), b (first right, second wrong), c (first wrong,
    second right), p (mcnemar_exact(b, c)), lo and hi (the interval of diff) and significant (the interval
    excludes 0).

    Why paired beats unpaired. Both stages answer the same problems, so most of the noise in the two
    accuracies is shared: an easy problem is solved by both, a hard one by neither. Only the problems where
    the stages disagree carry information about which is better. An unpaired comparison treats the two
    accuracies as independent samples and pays for that shared noise twice.
    Worked example, 200 problems, the first stage solves 120 (60%) and the second 130 (65%):
        unpaired: Wilson intervals 53-67% and 58-71% overlap; a two-sample z test gives p = 0.30.
        paired, b=0, c=10 (the second solves all the first did, plus 10): p = 2/1024 = 0.002, interval
            of the difference +1.8% to +8.2%: a real improvement.
        paired, b=20, c=30 (the stages trade 50 problems): p = 0.20, interval -2.0% to +11.9%: noise.
    Same accuracies, opposite verdicts: only the pairing can tell these apart.

    The interval is Newcombe's (1998) method 10 for paired data: the Wilson interval of each accuracy
    (sane near 0% and 100%, unlike +-2se), combined by "square and add" as the variance of a difference
    is, with a correlation term phi for the shared noise. phi is the correlation of the two stages' right /
    wrong outcomes over the problems; a positive phi (both solve the same problems) narrows the interval.
    Newcombe shrinks a positive phi's numerator by n/2, a continuity correction that keeps coverage near
    95% in small samples, and sets phi to 0 when a margin is empty (an accuracy of 0% or 100%).
    R. G. Newcombe, "Improved confidence intervals for the difference between binomial proportions based on
    paired data", Statistics in Medicine 17:2635-2650 (1998).
    """
    if len(first) != len(second):
        raise ValueError(f"paired results need one entry per problem in each stage, got {len(first)} and {len(second)}")
    if not first:
        raise ValueError("paired results are empty: no problems to compare")
    n = len(first)
    both = sum(1 for x, y in zip(first, second) if x and y)
    b = sum(1 for x, y in zip(first, second) if x and not y)  # only the first stage solved it
    c = sum(1 for x, y in zip(first, second) if y and not x)  # only the second stage solved it
    neither = n - both - b - c
    p1, p2 = (both + b) / n, (both + c) / n  # the two accuracies
    l1, u1 = wilson_interval(both + b, n, z)
    l2, u2 = wilson_interval(both + c, n, z)
    # phi: the correlation of the two right/wrong outcomes, from the 2x2 table. Its numerator
    # both*neither - b*c is positive when the stages tend to solve the same problems.
    margins = (both + b) * (c + neither) * (both + c) * (b + neither)
    agreement = both * neither - b * c
    if agreement > n / 2:
        agreement -= n / 2  # Newcombe's continuity correction, applied to a positive numerator only
    elif agreement > 0:
        agreement = 0  # a positive numerator under n/2 rounds to no correlation
    phi = agreement / math.sqrt(margins) if margins > 0 else 0.0  # an empty margin: no correlation to use
    diff = p2 - p1
    # The lower limit of p2 - p1 combines how far p2 can fall (p2 - l2) with how far p1 can rise (u1 - p1);
    # the upper limit the reverse. The phi terms subtract the covariance: shared noise cancels in a difference.
    down2, up1 = p2 - l2, u1 - p1
    up2, down1 = u2 - p2, p1 - l1
    lo = diff - math.sqrt(max(0.0, down2**2 - 2 * phi * down2 * up1 + up1**2))
    hi = diff + math.sqrt(max(0.0, up2**2 - 2 * phi * up2 * down1 + down1**2))
    lo, hi = max(-1.0, lo), min(1.0, hi)
    return dict(n=n, first_correct=both + b, second_correct=both + c, diff=diff, b=b, c=c,
                p=mcnemar_exact(b, c), lo=lo, hi=hi, significant=lo > 0 or hi < 0)
