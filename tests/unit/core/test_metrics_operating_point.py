"""The operating point: every rule judged at the same coverage on a split."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import InputError
from core.metrics import coverage_gap, shift_to_coverage


@pytest.mark.parametrize("coverage", [0.1, 0.37, 0.5, 0.7, 0.8, 0.995, 1.0])
@pytest.mark.parametrize("n", [1, 7, 1000, 4321])
def test_shift_gives_the_coverage_on_the_split(coverage, n):
    conf = np.random.default_rng(n).normal(size=n)
    shifted = shift_to_coverage(conf, coverage)
    accepted = int((shifted > 0).sum())
    assert accepted == min(max(round(coverage * n), 1), n)
    if n >= 1000:
        assert coverage_gap(shifted > 0, coverage) <= 0.5 / n + 1e-12
    # one constant: order and distances kept
    np.testing.assert_allclose(np.diff(shifted), np.diff(conf.astype(np.float64)))


def test_a_tie_block_at_the_cut_goes_one_way_and_the_gap_says_so():
    conf = np.array([3.0, 2.0, 1.0, 1.0, 1.0, 1.0, 0.0, -1.0, -2.0, -3.0])
    shifted = shift_to_coverage(conf, 0.5)
    acc = shifted > 0
    assert acc[:2].all() and not acc[2:6].any()  # the four tied 1.0 rejected together
    assert coverage_gap(acc, 0.5) == pytest.approx(0.3)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, "x", None])
def test_bad_coverage_is_one_clear_error(bad):
    with pytest.raises(InputError, match="coverage"):
        shift_to_coverage(np.arange(5.0), bad)
