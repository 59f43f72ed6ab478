"""Rank agreement of two orderings of the same items, as the benches report it: Kendall's tau-b and Spearman's rho
(a search is a ranking machine: what matters first is that its proxy orders architectures as they really are)."""

from __future__ import annotations

import math

import numpy as np


def kendall_tau(a, b) -> float:
    """Kendall's tau-b (ties in either ranking counted as neither concordant nor discordant)."""
    n, concordant, discordant, ties_a, ties_b = len(a), 0, 0, 0, 0
    for i in range(n):
        for j in range(i + 1, n):
            da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif da == db:
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denominator if denominator else float("nan")


def _ranks(values) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    order = values.argsort()
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    for v in np.unique(values):  # ties share their mean rank
        ranks[values == v] = ranks[values == v].mean()
    return ranks


def spearman_rho(a, b) -> float:
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])
