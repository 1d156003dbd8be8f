"""``loss_based``: Byun & Lee's allocation: everyone starts low, the best by loss are promoted once.

Byun & Lee (NAACL 2025) start every client at rank 5; after a client's first local training its
validation loss is a proxy for its data quality, and the best 10 % get rank 20 for the rest of the
run. Promotion happens once: re-allocation in later rounds is not described in the paper.

The loss is a proxy for data quality only on data that is the same for every client: a client
scored on a slice of its own data looks best when its data is most skewed (it fits its few
classes easily).  So by default (``score_on = "server"``) every client's trained adapter is
scored by the server on one common validation set of ``score_rows`` rows, balanced over the
labels and held out of every client; ``score_on = "local"`` keeps the own-slice score.

With partial participation only the round's participants have a loss after round 1. The policy
promotes ``fraction`` of the clients it has observed (rounded half up), never an unobserved one:
with 10 % participation and a 10 % fraction that is the best 10 % of round 1's participants, i.e.
about 1 % of all clients, and nobody when fewer than five clients took part. ``probe=True`` asks
the runner to score every client once before round 1 (the paper's setup as we read it) and to pass
all those losses in one :meth:`LossBasedRanks.observe_losses` call, so the share is of everyone.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedlora.errors import ConfigError, FedloraError
from fedlora.ranks._checks import check_fraction, check_seed, count_for_fraction
from fedlora.ranks.policy import RankPolicy, ScoreOn, Scoring
from fedlora.ranks.tier import RankTier

SCORE_ON: tuple[ScoreOn, ...] = ("server", "local")


class LossBasedRanks(RankPolicy):
    """All clients at ``low`` until the first :meth:`observe_losses`, which promotes the best once.

    Parameters
    ----------
    low, high
        Ranks or tiers (any form :meth:`RankTier.parse` accepts).
    fraction
        Share of the *scored* clients to promote, in [0, 1]: with a probe that is every client;
        without one, the clients that trained in round 1 (promoting ``fraction * N`` of only
        those would promote all of them whenever participation equals the fraction).
    probe
        Ask the runner to score every client before round 1 (:meth:`wants_scores` round 0; the
        default, as in Byun & Lee, who rank all clients).
    seed
        Breaks exact loss ties: a seeded permutation of the client ids orders tied clients, so
        ties favour neither low nor high ids, and the same seed gives the same choice.
    score_on
        ``"server"``: the loss of each client's trained adapter on the server's common
        validation set; ``"local"``: on a held-out tenth of the client's own rows.
    score_rows
        Size of the server's validation set (rows held out of every client, balanced over the
        labels or tasks).
    """

    name = "loss_based"

    def __init__(
        self,
        low: int | str | dict[str, Any] | RankTier = 5,
        high: int | str | dict[str, Any] | RankTier = 20,
        fraction: float = 0.1,
        probe: bool = True,
        seed: int = 0,
        score_on: ScoreOn = "server",
        score_rows: int = 256,
    ) -> None:
        super().__init__()
        self.low = RankTier.parse(low, "low")
        self.high = RankTier.parse(high, "high")
        self.fraction = check_fraction(fraction, "fraction")
        if not isinstance(probe, bool):
            raise ConfigError(f"probe must be true or false, got {probe!r}")
        self.probe = probe
        self.seed = check_seed(seed)
        if score_on not in SCORE_ON:
            raise ConfigError(f"score_on must be one of {', '.join(SCORE_ON)}, got {score_on!r}")
        if isinstance(score_rows, bool) or not isinstance(score_rows, int) or score_rows < 1:
            raise ConfigError(f"score_rows must be a positive integer, got {score_rows!r}")
        self._scoring = Scoring(on=score_on, rows=score_rows)
        self._promoted: list[int] | None = None

    def options(self) -> dict[str, Any]:
        return {
            "low": self.low.to_config(),
            "high": self.high.to_config(),
            "fraction": self.fraction,
            "probe": self.probe,
            "seed": self.seed,
            "score_on": self._scoring.on,
            "score_rows": self._scoring.rows,
        }

    def wants_scores(self, round_index: int) -> bool:
        """Round 0 (the probe of every client) or, without a probe, round 1's participants."""
        if self._promoted is not None:
            return False
        return round_index == (0 if self.probe else 1)

    @property
    def scoring(self) -> Scoring:
        return self._scoring

    def possible_tiers(self) -> list[RankTier]:
        return [*super().possible_tiers(), self.high]

    @property
    def promoted_clients(self) -> list[int] | None:
        """The sorted ids promoted to ``high``, or None while no losses have been observed."""
        return None if self._promoted is None else list(self._promoted)

    def observe_losses(self, losses: Mapping[int, float]) -> list[RankTier] | None:
        """Promotes the lowest-loss observed clients on the first non-empty call, then never again.

        Promotes ``fraction`` of the observed clients, rounded half up. Returns the new allocation,
        or None when nothing changed (an empty mapping, a later call, or a share that rounds to
        zero clients; that call still counts as the one promotion). Lower loss is better; ``inf``
        is allowed (never preferred), NaN is refused.
        """
        allocation = self._require_allocation()
        if self._promoted is not None or not losses:
            return None
        num_clients = len(allocation)
        scored = self._validated(losses, num_clients)
        count = count_for_fraction(self.fraction, len(scored))
        tie_order = np.random.default_rng(self.seed).permutation(num_clients)
        ranked = sorted(scored, key=lambda client: (scored[client], int(tie_order[client])))
        self._promoted = sorted(ranked[:count])
        if not self._promoted:
            return None
        for client in self._promoted:
            allocation[client] = self.high
        return list(allocation)

    def _validated(self, losses: Mapping[int, float], num_clients: int) -> dict[int, float]:
        scored: dict[int, float] = {}
        for client, loss in losses.items():
            if isinstance(client, bool) or not isinstance(client, numbers.Integral):
                raise FedloraError(f"loss keys must be client indices, got {client!r}")
            if not 0 <= int(client) < num_clients:
                raise FedloraError(f"client index {client} is outside 0..{num_clients - 1}")
            if isinstance(loss, bool) or not isinstance(loss, numbers.Real):
                raise FedloraError(f"client {client}: loss must be a number, got {loss!r}")
            if math.isnan(float(loss)):
                raise FedloraError(f"client {client}: loss is NaN")
            scored[int(client)] = float(loss)
        return scored

    def _allocate(self, num_clients: int) -> list[RankTier]:
        return [self.low] * num_clients

    def _reset(self) -> None:
        self._promoted = None

    def _extra_state(self) -> dict[str, Any]:
        return {"promoted": self._promoted}

    def _load_extra_state(self, extra: Mapping[str, Any]) -> None:
        promoted = extra.get("promoted")
        if promoted is not None and (
            not isinstance(promoted, list) or not all(isinstance(c, int) for c in promoted)
        ):
            raise FedloraError(f"loss_based state has an invalid promoted list: {promoted!r}")
        self._promoted = None if promoted is None else sorted(promoted)
