"""Dirichlet label skew: the standard non-IID benchmark split (Hsu et al. 2019, NIID-Bench)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fedlora.data.partition.base import IndexArray, Partitioner
from fedlora.errors import ConfigError


class DirichletPartitioner(Partitioner):
    """Each class is spread over clients with proportions drawn from ``Dirichlet(alpha)``.

    Small ``alpha`` gives each client few classes; large ``alpha`` approaches IID.  As in the
    standard algorithm, a client already holding more than ``n / num_clients`` rows gets no more
    (``self_balancing``), and the whole draw is repeated until every client has ``min_size`` rows,
    at most ``max_retries`` times.
    """

    name = "dirichlet"

    def __init__(
        self,
        *,
        alpha: float,
        seed: int,
        min_size: int = 10,
        max_retries: int = 100,
        self_balancing: bool = True,
    ) -> None:
        super().__init__(seed=seed)
        if not alpha > 0 or not np.isfinite(alpha):
            raise ConfigError(f"partitioner 'dirichlet': alpha must be > 0, got {alpha!r}")
        if min_size < 1:
            raise ConfigError(f"partitioner 'dirichlet': min_size must be >= 1, got {min_size}")
        if max_retries < 1:
            raise ConfigError(
                f"partitioner 'dirichlet': max_retries must be >= 1, got {max_retries}"
            )
        self.alpha = float(alpha)
        self.min_size = min_size
        self.max_retries = max_retries
        self.self_balancing = self_balancing

    def partition(self, labels: npt.ArrayLike, num_clients: int) -> list[IndexArray]:
        labels = self._check(labels, num_clients)
        n = len(labels)
        if self.min_size * num_clients > n:
            raise ConfigError(
                f"partitioner 'dirichlet': {num_clients} clients x min_size {self.min_size} "
                f"exceeds {n} samples"
            )
        rng = self._rng()
        by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        smallest = 0
        for _ in range(self.max_retries):
            parts = self._draw(by_class, num_clients, n, rng)
            smallest = min(len(p) for p in parts)
            if smallest >= self.min_size:
                return parts
        raise ConfigError(
            f"partitioner 'dirichlet': no draw in {self.max_retries} tries gave every one of "
            f"{num_clients} clients min_size={self.min_size} samples (last smallest: {smallest}); "
            f"raise alpha or max_retries, or lower num_clients or min_size"
        )

    def _draw(
        self,
        by_class: list[npt.NDArray[np.intp]],
        num_clients: int,
        n: int,
        rng: np.random.Generator,
    ) -> list[IndexArray]:
        chunks: list[list[npt.NDArray[np.intp]]] = [[] for _ in range(num_clients)]
        sizes = np.zeros(num_clients, dtype=np.int64)
        for members in by_class:
            shuffled = rng.permutation(members)
            share = rng.dirichlet(np.full(num_clients, self.alpha))
            if not np.all(np.isfinite(share)) or share.sum() <= 0:  # underflow at tiny alpha
                share = np.eye(num_clients)[rng.integers(num_clients)]
            if self.self_balancing:
                capped = share * (sizes < n / num_clients)
                if capped.sum() > 0:
                    share = capped
            share = share / share.sum()
            cuts = (np.cumsum(share)[:-1] * len(shuffled)).astype(np.int64)
            for client, chunk in enumerate(np.split(shuffled, cuts)):
                chunks[client].append(chunk)
                sizes[client] += len(chunk)
        return [np.sort(np.concatenate(c)).astype(np.int64) for c in chunks]
