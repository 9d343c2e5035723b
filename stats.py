"""Statistics the evaluations report: a proportion's confidence interval and the pass@k estimator. A room:
eval.py and benchmarks.py import it, so every interval in the project is computed one way.
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
