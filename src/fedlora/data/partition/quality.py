"""Byun & Lee's quality split: a few clients hold near-balanced data, the rest strongly skewed data.

Rank-heterogeneous experiments give the high-quality clients the larger LoRA ranks, so the split
also says which clients those are (:meth:`QualityPartitioner.high_quality_clients`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedlora.data.partition.base import IndexArray, Partitioner
from fedlora.errors import ConfigError


@dataclass(frozen=True, eq=False)
class QualityPartition:
    """The client index arrays and the sorted ids of the high-quality clients."""

    partitions: list[IndexArray]
    high_quality_clients: list[int]


class QualityPartitioner(Partitioner):
    """Equal-size clients whose label mixes come from ``Dirichlet(high_alpha)`` for a random
    ``high_quality_fraction`` of them (at least one if the fraction is > 0) and from
    ``Dirichlet(low_alpha)`` for the rest.

    Rows are drawn without replacement, high-quality clients first so that their balanced mix
    is met before classes run out; a client whose preferred classes are exhausted takes rows of
    the remaining classes.  Every row is assigned.
    """

    name = "quality"

    def __init__(
        self,
        *,
        seed: int,
        high_quality_fraction: float = 0.1,
        high_alpha: float = 10.0,
        low_alpha: float = 0.1,
    ) -> None:
        super().__init__(seed=seed)
        if not 0.0 <= high_quality_fraction <= 1.0:
            raise ConfigError(
                f"partitioner 'quality': high_quality_fraction must be in [0, 1], "
                f"got {high_quality_fraction!r}"
            )
        for key, value in (("high_alpha", high_alpha), ("low_alpha", low_alpha)):
            if not value > 0 or not np.isfinite(value):
                raise ConfigError(f"partitioner 'quality': {key} must be > 0, got {value!r}")
        self.high_quality_fraction = float(high_quality_fraction)
        self.high_alpha = float(high_alpha)
        self.low_alpha = float(low_alpha)

    def high_quality_clients(self, num_clients: int) -> list[int]:
        """The sorted high-quality client ids; depends only on ``seed`` and ``num_clients``."""
        if num_clients < 1:
            raise ConfigError(f"partitioner 'quality': num_clients must be >= 1, got {num_clients}")
        count = round(self.high_quality_fraction * num_clients)
        if self.high_quality_fraction > 0:
            count = max(1, count)
        chosen = np.random.default_rng([self.seed, 1]).choice(num_clients, count, replace=False)
        return sorted(int(c) for c in chosen)

    def partition(self, labels: npt.ArrayLike, num_clients: int) -> list[IndexArray]:
        return self.split(labels, num_clients).partitions

    def split(self, labels: npt.ArrayLike, num_clients: int) -> QualityPartition:
        """The partition together with which clients are high quality."""
        labels = self._check(labels, num_clients)
        n = len(labels)
        high = self.high_quality_clients(num_clients)
        rng = self._rng()
        pools = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
        remaining = np.array([len(p) for p in pools], dtype=np.int64)
        quotas = np.full(num_clients, n // num_clients, dtype=np.int64)
        quotas[: n % num_clients] += 1
        is_high = np.zeros(num_clients, dtype=bool)
        is_high[high] = True
        low = np.flatnonzero(~is_high)
        order = [*rng.permutation(np.asarray(high, dtype=np.int64)), *rng.permutation(low)]
        parts: list[IndexArray] = [np.empty(0, dtype=np.int64)] * num_clients
        for client in (int(c) for c in order):
            alpha = self.high_alpha if is_high[client] else self.low_alpha
            mix = rng.dirichlet(np.full(len(pools), alpha))
            counts = _draw_counts(int(quotas[client]), mix, remaining, rng)
            taken = []
            for c, k in enumerate(counts.tolist()):
                start = len(pools[c]) - int(remaining[c])
                taken.append(pools[c][start : start + k])
            remaining -= counts
            parts[client] = np.sort(np.concatenate(taken)).astype(np.int64)
        return QualityPartition(partitions=parts, high_quality_clients=high)


def _draw_counts(
    need: int,
    mix: npt.NDArray[np.float64],
    remaining: npt.NDArray[np.int64],
    rng: np.random.Generator,
) -> npt.NDArray[np.int64]:
    """Per-class counts summing to ``need``, drawn from ``mix`` and capped by ``remaining``.

    Each round either meets the need or exhausts a class, so it ends within ``len(mix)+1`` rounds.
    """
    counts = np.zeros(len(mix), dtype=np.int64)
    if not np.all(np.isfinite(mix)):  # Dirichlet underflow at tiny alpha
        mix = np.ones(len(mix))
    while need > 0:
        available = remaining - counts
        weights = mix * (available > 0)
        if weights.sum() <= 0:
            weights = (available > 0).astype(np.float64)
        take = np.minimum(rng.multinomial(need, weights / weights.sum()), available)
        counts += take
        need -= int(take.sum())
    return counts
