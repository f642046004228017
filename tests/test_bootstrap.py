"""The paired bootstrap interval used for the quickstart's differences."""
from __future__ import annotations

import random

import numpy as np
import pytest

from deepretrieval.core.bootstrap import paired_bootstrap


def test_interval_contains_the_mean_and_is_seeded():
    rng = random.Random(1)
    a = [rng.random() for _ in range(200)]
    b = [x - 0.1 + rng.gauss(0, 0.05) for x in a]
    d = paired_bootstrap(a, b, seed=3)
    assert d.mean == pytest.approx(float(np.mean(np.subtract(a, b))))
    assert d.low < d.mean < d.high
    assert d.excludes_zero and d.low > 0
    assert paired_bootstrap(a, b, seed=3) == d
    assert paired_bootstrap(a, b, seed=4) != d
    assert d.n == 200 and d.confidence == 0.95


def test_pairing_matters():
    # b = a + 0.01 exactly: a paired interval is a single point; an unpaired one would be wide
    rng = random.Random(2)
    a = [rng.random() for _ in range(100)]
    b = [x + 0.01 for x in a]
    d = paired_bootstrap(b, a)
    assert d.low == pytest.approx(0.01) and d.high == pytest.approx(0.01)


def test_interval_width_matches_the_standard_error():
    # for a mean of n iid values the 95 % interval is about ±1.96 σ/√n
    rng = np.random.default_rng(0)
    diff = rng.normal(0.2, 1.0, size=400)
    d = paired_bootstrap(diff, np.zeros(400), resamples=20_000)
    se = diff.std() / np.sqrt(400)
    assert (d.high - d.low) / 2 == pytest.approx(1.96 * se, rel=0.1)
    assert not paired_bootstrap([1, -1, 1, -1], [0, 0, 0, 0]).excludes_zero


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap([1, 2], [1])
    with pytest.raises(ValueError, match="no items"):
        paired_bootstrap([], [])
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap([1, float("nan")], [0, 0])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([1], [0], confidence=95)
