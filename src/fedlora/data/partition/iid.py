"""IID partitioning: the baseline where every client sees the global label mix."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fedlora.data.partition.base import IndexArray, Partitioner, split_by_sizes


class IidPartitioner(Partitioner):
    """Shuffles the rows and deals them into ``num_clients`` parts whose sizes differ by <= 1."""

    name = "iid"

    def partition(self, labels: npt.ArrayLike, num_clients: int) -> list[IndexArray]:
        n = len(self._check(labels, num_clients))
        sizes = np.full(num_clients, n // num_clients, dtype=np.int64)
        sizes[: n % num_clients] += 1
        return split_by_sizes(self._rng().permutation(n).astype(np.int64), sizes)
