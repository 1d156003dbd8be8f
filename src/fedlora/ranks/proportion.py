"""``proportion``: a fixed share of clients at a high rank, the rest low (Byun & Lee)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedlora.errors import ConfigError
from fedlora.ranks._checks import (
    check_fraction,
    check_num_clients,
    check_seed,
    count_for_fraction,
)
from fedlora.ranks.policy import RankPolicy
from fedlora.ranks.tier import RankTier

CHOICES = ("random", "high_quality")


class ProportionRanks(RankPolicy):
    """Exactly ``fraction * num_clients`` clients (rounded half up) get ``high``.

    The count is exact rather than drawn per client, so a "10 %" experiment really has 10 % of its
    clients at the high rank, whatever the seed.  Which clients: at random (``choose =
    "random"``), or the partition's high-quality clients (``choose = "high_quality"``, Byun &
    Lee's premise: the well-resourced clients that train the high rank are the ones with good
    data; it needs a partition that has high-quality clients, the quality split).  When the
    fraction asks for more clients than there are high-quality ones, the rest are drawn at random;
    when for fewer, a random subset of them gets the high rank.

    Parameters
    ----------
    high, low
        Ranks or tiers (any form :meth:`RankTier.parse` accepts).
    fraction
        Share of clients at ``high``, in [0, 1]; 0 and 1 give homogeneous runs.
    seed
        Seeds the choice of high-rank clients; same seed and client count, same clients.
    choose
        ``"random"`` or ``"high_quality"``.
    """

    name = "proportion"

    def __init__(
        self,
        high: int | str | dict[str, Any] | RankTier = 20,
        low: int | str | dict[str, Any] | RankTier = 5,
        fraction: float = 0.1,
        seed: int = 0,
        choose: str = "random",
    ) -> None:
        super().__init__()
        self.high = RankTier.parse(high, "high")
        self.low = RankTier.parse(low, "low")
        self.fraction = check_fraction(fraction, "fraction")
        self.seed = check_seed(seed)
        if choose not in CHOICES:
            raise ConfigError(f"choose must be one of {', '.join(CHOICES)}, got {choose!r}")
        self.choose = choose
        self._preferred: list[int] | None = None

    def options(self) -> dict[str, Any]:
        return {
            "high": self.high.to_config(),
            "low": self.low.to_config(),
            "fraction": self.fraction,
            "seed": self.seed,
            "choose": self.choose,
        }

    @property
    def wants_high_quality_clients(self) -> bool:
        return self.choose == "high_quality"

    def prefer(self, clients: Sequence[int]) -> None:
        self._preferred = sorted(int(c) for c in clients)

    def high_clients(self, num_clients: int) -> list[int]:
        """The sorted ids of the clients that get ``high`` for this ``num_clients``."""
        count = count_for_fraction(self.fraction, check_num_clients(num_clients))
        rng = np.random.default_rng(self.seed)
        if self.choose == "random":
            return sorted(int(i) for i in rng.permutation(num_clients)[:count])
        if self._preferred is None:
            raise ConfigError(
                "ranks.options.choose = 'high_quality' needs a partition with high-quality "
                "clients (data.partition = 'quality')"
            )
        preferred = [int(c) for c in rng.permutation(self._preferred)]
        others = [int(c) for c in rng.permutation(num_clients) if int(c) not in preferred]
        return sorted([*preferred, *others][:count])

    def _allocate(self, num_clients: int) -> list[RankTier]:
        allocation = [self.low] * num_clients
        for client in self.high_clients(num_clients):
            allocation[client] = self.high
        return allocation
