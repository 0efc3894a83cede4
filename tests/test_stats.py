"""jaxae.stats against numbers computed by hand and the printed t table."""

import math

import numpy as np
import pytest

from jaxae import stats


def test_t_interval_of_one_to_four_by_hand():
  # mean 2.5; s = sqrt(((1.5^2 + 0.5^2) * 2) / 3) = sqrt(5/3) = 1.29099; t_{0.975, 3} = 3.182 (t table);
  # half-width 3.18245 * 1.29099 / sqrt(4) = 2.05426.
  r = stats.t_interval([1.0, 2.0, 3.0, 4.0])
  assert r.n == 4 and r.mean == 2.5
  assert r.half_width == pytest.approx(2.05426, abs=1e-5)
  assert (r.low, r.high) == pytest.approx((2.5 - 2.05426, 2.5 + 2.05426), abs=1e-5)


@pytest.mark.parametrize("n, t_table", [(2, 12.706), (4, 3.182), (10, 2.262), (31, 2.042)])
def test_half_width_is_the_t_quantile_times_the_standard_error(n, t_table):
  x = np.random.default_rng(n).normal(size=n)
  r = stats.t_interval(x)
  assert r.half_width / (np.std(x, ddof=1) / math.sqrt(n)) == pytest.approx(t_table, abs=1e-3)


def test_other_confidence_and_one_value():
  r = stats.t_interval([1.0, 2.0, 3.0, 4.0], confidence=0.90)  # t_{0.95, 3} = 2.353
  assert r.half_width == pytest.approx(2.353 * math.sqrt(5 / 3) / 2, abs=1e-3)
  one = stats.t_interval([0.25])
  assert one.n == 1 and one.mean == 0.25 and math.isnan(one.half_width) and math.isnan(one.low)
  with pytest.raises(ValueError):
    stats.t_interval([])


def test_paired_difference_by_hand():
  # differences 2, 3, 1, 2: mean 2, s = sqrt(2/3) = 0.81650, half-width 3.18245 * 0.81650 / 2 = 1.29923
  r = stats.paired_difference([3.0, 5.0, 4.0, 6.0], [1.0, 2.0, 3.0, 4.0])
  assert r.n == 4 and r.mean == 2.0
  assert r.half_width == pytest.approx(1.29923, abs=1e-5)
  # Unpaired, the two settings' intervals overlap; paired, the difference is clearly above 0.
  assert stats.t_interval([3.0, 5.0, 4.0, 6.0]).low < stats.t_interval([1.0, 2.0, 3.0, 4.0]).high and r.low > 0
  with pytest.raises(ValueError, match="one value of each setting per seed"):
    stats.paired_difference([1.0, 2.0], [1.0])
