"""Paired bootstrap confidence interval for the difference of two systems' mean per-item scores.

Both systems are scored on the same items (e.g. test claims); each resample draws items with
replacement and takes the mean of the per-item differences, so the interval reflects which items
happen to be in the test set, not the systems' own noise. Seeded: the same inputs and seed give the
same interval. The interval is the percentile interval of the resampled means (Efron &
Tibshirani, ch. 13).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedDifference:
    """Mean of ``a - b`` over the items and its bootstrap interval at ``confidence``."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float
    resamples: int
    seed: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, float | int | bool]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n,
                "confidence": self.confidence, "resamples": self.resamples, "seed": self.seed,
                "excludes_zero": self.excludes_zero}

    def __str__(self) -> str:
        pct = f"{self.confidence:.0%}"
        return f"{self.mean:+.3f} [{pct} CI {self.low:+.3f}, {self.high:+.3f}]"


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, resamples: int = 10_000,
                     confidence: float = 0.95, seed: int = 0) -> PairedDifference:
    """Percentile bootstrap interval of ``mean(a) - mean(b)`` with ``a[i]`` and ``b[i]`` scored
    on the same item ``i`` (resampling items, keeping the pairs)."""
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same items: {len(a)} vs {len(b)} values")
    if len(a) == 0:
        raise ValueError("no items to bootstrap")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    if resamples < 1:
        raise ValueError("resamples must be >= 1")
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if not np.all(np.isfinite(diff)):
        raise ValueError("paired scores must be finite numbers (score a missing item explicitly)")
    rng = np.random.default_rng(seed)
    n = len(diff)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // n)          # bounded memory: at most ~2M draws at a time
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        means[start:stop] = diff[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    mean = float(diff.mean())
    return PairedDifference(mean=mean, low=float(low), high=float(high), n=n,
                            confidence=confidence, resamples=resamples, seed=seed)


__all__ = ["PairedDifference", "paired_bootstrap"]
