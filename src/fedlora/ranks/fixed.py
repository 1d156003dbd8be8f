"""``fixed``: every client trains the same tier (the homogeneous baselines, e.g. r = 5, 7, 20)."""

from __future__ import annotations

from typing import Any

from fedlora.ranks.policy import RankPolicy
from fedlora.ranks.tier import RankTier


class FixedRanks(RankPolicy):
    """One tier for all clients.

    Parameters
    ----------
    rank
        A rank (``8``), or a tier in any form :meth:`RankTier.parse` accepts, e.g.
        ``{"attention": 30, "mlp": 200}``.
    """

    name = "fixed"

    def __init__(self, rank: int | str | dict[str, Any] | RankTier) -> None:
        super().__init__()
        self.tier = RankTier.parse(rank, "rank")

    def options(self) -> dict[str, Any]:
        return {"rank": self.tier.to_config()}

    def _allocate(self, num_clients: int) -> list[RankTier]:
        return [self.tier] * num_clients
