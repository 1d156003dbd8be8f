"""The partitioner contract: labels in, one array of row indices per client out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from fedlora.errors import ConfigError

IndexArray = npt.NDArray[np.int64]


class Partitioner(ABC):
    """Splits a dataset's rows among clients, deterministically for a given ``seed``.

    Only the labels are needed (label-skew methods look at them, the others use their count), so
    partitioners work on any dataset and stay independent of how texts are stored.
    """

    name: ClassVar[str]

    def __init__(self, *, seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ConfigError(f"partitioner {self.name!r}: seed must be an int >= 0, got {seed!r}")
        self.seed = int(seed)

    @abstractmethod
    def partition(self, labels: npt.ArrayLike, num_clients: int) -> list[IndexArray]:
        """One sorted int64 index array per client, in client order."""

    def _rng(self) -> np.random.Generator:
        """A fresh generator per call, so repeated calls give the same split."""
        return np.random.default_rng(self.seed)

    def _check(self, labels: npt.ArrayLike, num_clients: int) -> npt.NDArray[np.int64]:
        """The labels as a 1-D int64 array, after the checks every partitioner shares."""
        array = np.asarray(labels)
        if array.ndim != 1:
            raise ConfigError(f"partitioner {self.name!r}: labels must be 1-D, got {array.shape}")
        if len(array) and not np.issubdtype(array.dtype, np.integer):
            raise ConfigError(f"partitioner {self.name!r}: labels must be integers")
        array = array.astype(np.int64, copy=False)
        if len(array) and array.min() < 0:
            raise ConfigError(f"partitioner {self.name!r}: labels must be >= 0")
        if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
            raise ConfigError(
                f"partitioner {self.name!r}: num_clients must be an int >= 1, got {num_clients!r}"
            )
        if num_clients > len(array):
            raise ConfigError(
                f"partitioner {self.name!r}: {num_clients} clients but only {len(array)} samples"
            )
        return array


def split_by_sizes(order: npt.NDArray[np.int64], sizes: npt.NDArray[np.int64]) -> list[IndexArray]:
    """Consecutive chunks of ``order`` with the given sizes, each sorted."""
    bounds = np.cumsum(sizes)[:-1]
    return [np.sort(chunk).astype(np.int64) for chunk in np.split(order, bounds)]
