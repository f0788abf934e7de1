"""Statistics of replicated runs: the Student-t confidence interval of a mean over seeds.

The band drawn around every sweep curve is the 95% **Student-t confidence interval of the mean**,
``mean +- t_{0.975, n-1} * sd / sqrt(n)`` (sample sd, ``ddof=1``): the interval for the expected
curve, not a spread of individual runs; with one seed it has zero width.
"""

from __future__ import annotations

import numpy as np


def t_quantile(p: float | np.ndarray, df: float | np.ndarray) -> float | np.ndarray:
    """Quantile ``p`` of Student's t distribution with ``df`` degrees of freedom.

    ``scipy.stats.t.ppf``, with the arguments checked (SciPy returns NaN for bad ones): the
    special function it evaluates, ``scipy.special.stdtrit(df, p)`` (the same numbers, bit for
    bit: ``t.ppf`` is ``stdtrit`` times scale 1 plus loc 0), without importing ``scipy.stats``
    (~0.4 s, a tenth of a 400-job sweep's figures). Scalars give a float; arrays broadcast.
    """
    # Imported here: reading jobs or tables needs none of SciPy.
    from scipy.special import stdtrit

    p_arr, df_arr = np.asarray(p, dtype=np.float64), np.asarray(df, dtype=np.float64)
    if np.any(~((p_arr > 0.0) & (p_arr < 1.0))) or np.any(~(df_arr > 0)):
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    q = stdtrit(df_arr, p_arr)
    return float(q) if np.ndim(q) == 0 else q


def mean_band(values: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over axis 0 and the Student-t ``level`` confidence interval of that mean.

    ``values`` is ``(n_seeds, ...)``; NaNs (metric not applicable) are ignored per column.
    Returns ``(mean, low, high)``; where fewer than 2 values exist the band has zero width.
    """
    values = np.asarray(values, dtype=np.float64)
    n = np.sum(~np.isnan(values), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(values, axis=0) / n
        sd = np.sqrt(np.nansum((values - mean) ** 2, axis=0) / (n - 1))
    replicated = n >= 2
    # df = 1 where unreplicated only to keep t finite; those entries are zeroed below.
    t = t_quantile(0.5 + level / 2.0, np.where(replicated, n - 1, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        half = np.where(replicated, t * sd / np.sqrt(n), 0.0)
    return mean, mean - half, mean + half
