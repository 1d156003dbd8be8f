"""Natural partitioning: clients are the groups the data already has (task, source, author)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fedlora.data.partition.base import IndexArray, Partitioner
from fedlora.errors import ConfigError


class NaturalPartitioner(Partitioner):
    """One client per distinct value of ``groups`` (one group id per row).

    Client ``i`` holds the rows of ``group_names[i]``, the ``i``-th group id in sorted order.
    Nothing here is random; ``seed`` is accepted so that every partitioner is built alike.
    """

    name = "natural"

    def __init__(self, *, groups: npt.ArrayLike, seed: int) -> None:
        super().__init__(seed=seed)
        array = np.asarray(groups)
        if array.ndim != 1 or len(array) == 0:
            raise ConfigError("partitioner 'natural': groups must be a non-empty 1-D array")
        self.group_names, self._group_of_row = np.unique(array, return_inverse=True)
        self.groups = array

    def partition(self, labels: npt.ArrayLike, num_clients: int) -> list[IndexArray]:
        labels = self._check(labels, num_clients)
        if len(labels) != len(self.groups):
            raise ConfigError(
                f"partitioner 'natural': {len(labels)} labels but {len(self.groups)} group ids"
            )
        if num_clients != len(self.group_names):
            raise ConfigError(
                f"partitioner 'natural': num_clients is {num_clients} but the data has "
                f"{len(self.group_names)} groups"
            )
        return [
            np.flatnonzero(self._group_of_row == g).astype(np.int64)
            for g in range(len(self.group_names))
        ]
