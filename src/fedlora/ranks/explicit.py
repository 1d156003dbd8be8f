"""``list``: an explicit tier per client id, for hand-built experiments and replays."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fedlora.errors import ConfigError
from fedlora.ranks.policy import RankPolicy
from fedlora.ranks.tier import RankTier


class ListRanks(RankPolicy):
    """Client ``i`` trains ``ranks[i]``; the list must have exactly one entry per client.

    Parameters
    ----------
    ranks
        One rank or tier (any form :meth:`RankTier.parse` accepts) per client id.
    """

    name = "list"

    def __init__(self, ranks: Sequence[int | str | dict[str, Any] | RankTier]) -> None:
        super().__init__()
        if isinstance(ranks, str | bytes) or not isinstance(ranks, Sequence) or not ranks:
            raise ConfigError(f"ranks must be a non-empty list of ranks or tiers, got {ranks!r}")
        self.tiers = [RankTier.parse(value, f"ranks[{i}]") for i, value in enumerate(ranks)]

    def options(self) -> dict[str, Any]:
        return {"ranks": [tier.to_config() for tier in self.tiers]}

    def _allocate(self, num_clients: int) -> list[RankTier]:
        if len(self.tiers) != num_clients:
            raise ConfigError(
                f"ranks lists {len(self.tiers)} clients but the run has {num_clients}"
            )
        return list(self.tiers)
