"""Quantity skew: clients differ in how much data they hold, not in its label mix."""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

from fedlora.data.partition.base import IndexArray, Partitioner, split_by_sizes
from fedlora.errors import ConfigError

SizeDistribution = Literal["lognormal", "powerlaw"]


class SizeSkewPartitioner(Partitioner):
    """Client sizes proportional to lognormal or power-law (Pareto) weights; labels stay IID.

    ``sigma`` is the lognormal's log-scale spread (0 gives equal sizes); ``shape`` is the Pareto
    shape for ``"powerlaw"`` (smaller is heavier-tailed, i.e. more skewed).  Every client gets at
    least ``min_size`` rows; the rest are apportioned by largest remainder.
    """

    name = "size_skew"

    def __init__(
        self,
        *,
        seed: int,
        distribution: SizeDistribution = "lognormal",
        sigma: float = 1.0,
        shape: float = 1.5,
        min_size: int = 1,
    ) -> None:
        super().__init__(seed=seed)
        if distribution not in ("lognormal", "powerlaw"):
            raise ConfigError(
                f"partitioner 'size_skew': distribution must be 'lognormal' or 'powerlaw', "
                f"got {distribution!r}"
            )
        if not sigma >= 0 or not np.isfinite(sigma):
            raise ConfigError(f"partitioner 'size_skew': sigma must be >= 0, got {sigma!r}")
        if not shape > 0 or not np.isfinite(shape):
            raise ConfigError(f"partitioner 'size_skew': shape must be > 0, got {shape!r}")
        if min_size < 1:
            raise ConfigError(f"partitioner 'size_skew': min_size must be >= 1, got {min_size}")
        self.distribution: SizeDistribution = distribution
        self.sigma = float(sigma)
        self.shape = float(shape)
        self.min_size = min_size

    def partition(self, labels: npt.ArrayLike, num_clients: int) -> list[IndexArray]:
        n = len(self._check(labels, num_clients))
        if self.min_size * num_clients > n:
            raise ConfigError(
                f"partitioner 'size_skew': {num_clients} clients x min_size {self.min_size} "
                f"exceeds {n} samples"
            )
        rng = self._rng()
        # Log-weights, exponentiated after subtracting the max so heavy tails cannot overflow.
        if self.distribution == "lognormal":
            log_w = rng.normal(0.0, self.sigma, num_clients)
        else:  # log of (Pareto(shape) + 1) is Exponential with mean 1 / shape
            log_w = rng.standard_exponential(num_clients) / self.shape
        weights = np.exp(log_w - log_w.max())
        sizes = self.min_size + _apportion(n - self.min_size * num_clients, weights)
        return split_by_sizes(rng.permutation(n).astype(np.int64), sizes)


def _apportion(total: int, weights: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Integers proportional to ``weights`` that sum to ``total`` (largest remainder)."""
    ideal = total * weights / weights.sum()
    counts: npt.NDArray[np.int64] = np.floor(ideal).astype(np.int64)
    order = np.argsort(-(ideal - counts), kind="stable")
    counts[order[: total - int(counts.sum())]] += 1
    return counts
