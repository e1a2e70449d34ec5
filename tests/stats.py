"""Goodness-of-fit test used by the losslessness tests.

Pearson's chi-square statistic over outcome counts against exact probabilities. Cells with an expected count below
5 are pooled into one cell. The critical value at significance ``alpha`` comes from the Wilson-Hilferty
approximation of the chi-square quantile (accurate to well under 1% for the degrees of freedom used here). A test
passes when the statistic is below the critical value; with alpha = 1e-3 a correct sampler fails one run in 1000.
"""

from __future__ import annotations

import math
from collections import Counter

Z = {1e-3: 3.0902, 1e-2: 2.3263}


def chi_square(counts: Counter, probs: dict, alpha: float = 1e-3) -> tuple[float, float, int]:
    """Returns (statistic, critical value, degrees of freedom). Outcomes missing from ``probs`` must not occur."""
    n = sum(counts.values())
    impossible = [o for o in counts if probs.get(o, 0.0) == 0.0]
    if impossible:
        return math.inf, 0.0, 0
    cells, pooled_expected, pooled_observed = [], 0.0, 0
    for outcome, p in probs.items():
        expected = n * p
        if expected < 5:
            pooled_expected += expected
            pooled_observed += counts.get(outcome, 0)
        else:
            cells.append((counts.get(outcome, 0), expected))
    if pooled_expected > 0:
        cells.append((pooled_observed, pooled_expected))
    statistic = sum((obs - exp) ** 2 / exp for obs, exp in cells)
    dof = len(cells) - 1
    z = Z[alpha]
    critical = dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3
    return statistic, critical, dof
