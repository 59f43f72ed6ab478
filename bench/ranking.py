"""Rank agreement of two orderings of the same items, as the benches report it: Kendall's tau-b and Spearman's rho
(a search is a ranking machine: what matters first is that its proxy orders architectures as they really are)."""

from __future__ import annotations

import numpy as np

from nas.search.refined import kendall_tau  # the product's own (the refine reports it); re-exported for the benches


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
