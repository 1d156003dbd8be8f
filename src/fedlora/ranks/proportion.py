"""``proportion``: a fixed share of clients at a high rank, the rest low (Byun & Lee)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedlora.ranks._checks import (
    check_fraction,
    check_num_clients,
    check_seed,
    count_for_fraction,
)
from fedlora.ranks.policy import RankPolicy
from fedlora.ranks.tier import RankTier


class ProportionRanks(RankPolicy):
    """Exactly ``fraction * num_clients`` clients (rounded half up) get ``high``, chosen at random.

    The count is exact rather than drawn per client, so a "10 %" experiment really has 10 % of its
    clients at the high rank, whatever the seed.

    Parameters
    ----------
    high, low
        Ranks or tiers (any form :meth:`RankTier.parse` accepts).
    fraction
        Share of clients at ``high``, in [0, 1]; 0 and 1 give homogeneous runs.
    seed
        Seeds the choice of high-rank clients; same seed and client count, same clients.
    """

    name = "proportion"

    def __init__(
        self,
        high: int | str | dict[str, Any] | RankTier = 20,
        low: int | str | dict[str, Any] | RankTier = 5,
        fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.high = RankTier.parse(high, "high")
        self.low = RankTier.parse(low, "low")
        self.fraction = check_fraction(fraction, "fraction")
        self.seed = check_seed(seed)

    def options(self) -> dict[str, Any]:
        return {
            "high": self.high.to_config(),
            "low": self.low.to_config(),
            "fraction": self.fraction,
            "seed": self.seed,
        }

    def high_clients(self, num_clients: int) -> list[int]:
        """The sorted ids of the clients that get ``high`` for this ``num_clients``."""
        count = count_for_fraction(self.fraction, check_num_clients(num_clients))
        rng = np.random.default_rng(self.seed)
        return sorted(int(i) for i in rng.permutation(num_clients)[:count])

    def _allocate(self, num_clients: int) -> list[RankTier]:
        allocation = [self.low] * num_clients
        for client in self.high_clients(num_clients):
            allocation[client] = self.high
        return allocation
