"""``distribution``: FlexLoRA's four client populations over its four rank tiers.

FlexLoRA (Bai et al., NeurIPS 2024) gives each client one of four LoRA types at start-up and keeps
it for the run. Types in the paper's order (Table 1), which is the order of :data:`FLEXLORA_TIERS`
and of every probability tuple here:

====== ========================= ===================== ===============================
paper  ranks                     reference code name   tier name here
====== ========================= ===================== ===============================
Type 1 8 on all layers           ``Type_0``            ``r8``
Type 2 30 on all layers          ``Type_3``            ``r30``
Type 3 30 attention, 200 MLP     ``Type_2``            ``attention30-mlp200``
Type 4 200 on all layers         ``Type_1``            ``r200``
====== ========================= ===================== ===============================

Probabilities are those of the released code (``alibaba/FederatedScope``, branch ``FlexLoRA``,
``main.py: get_peft``), translated from code names to paper order:

- ``uniform`` (code ``random``): 1/4 each.
- ``heavy_tail_light`` (code ``heavy_tail``): 80 % Type_0, 10 % Type_1, 5 % Type_2, 5 % Type_3,
  i.e. paper order (0.80, 0.05, 0.05, 0.10). The README's 85 % disagrees with the code.
- ``heavy_tail_strong``: 80 % Type_1, 10 % Type_2, 5 % Type_3, 5 % Type_0, i.e. paper order
  (0.05, 0.05, 0.10, 0.80).
- ``normal``: a normal pdf (mu 1.5, sigma 0.7) over the four types in paper (resource) order, at
  positions 0, 1, 2, 3: about (5.75, 44.25, 44.25, 5.75) %, dominated by Types 2 and 3 as the
  paper describes. This is what the code's ``positions = [0, 3, 2, 1]`` (the code names listed in
  paper order) was evidently meant to do.
- ``normal_as_coded``: what the released code actually samples. It evaluates the pdf at the code
  *names* (``norm.pdf([0, 3, 2, 1], 1.5, 0.7)``) and draws the name, so P(Type_k) = pdf(k): in
  paper order about (5.75, 5.75, 44.25, 44.25) %, dominated by Types 3 and 4. Use it only to
  reproduce the released code.

Two ways to sample. ``exact`` (default): the counts are fixed by largest-remainder rounding of
``p * num_clients`` and the clients are then shuffled, so a population always has its nominal
shape. ``iid``: each client draws its type independently, as the reference code does (client
``i``'s type then does not depend on ``num_clients``).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from fedlora.errors import ConfigError
from fedlora.ranks._checks import check_num_clients, check_seed
from fedlora.ranks.policy import RankPolicy
from fedlora.ranks.tier import RankTier

FLEXLORA_TIERS: tuple[RankTier, ...] = (
    RankTier.uniform(8),
    RankTier.uniform(30),
    RankTier.from_patterns({"attention": 30, "mlp": 200}),
    RankTier.uniform(200),
)
"""FlexLoRA's Types 1 to 4 (paper order)."""

NORMAL_MU = 1.5
NORMAL_SIGMA = 0.7


def normal_probabilities(
    positions: Sequence[float], mu: float = NORMAL_MU, sigma: float = NORMAL_SIGMA
) -> tuple[float, ...]:
    """The normal pdf at ``positions``, normalised to sum to 1 (the reference's construction)."""
    density = [math.exp(-0.5 * ((x - mu) / sigma) ** 2) for x in positions]
    total = sum(density)
    return tuple(d / total for d in density)


POPULATIONS: Mapping[str, tuple[float, ...]] = MappingProxyType(
    {
        "uniform": (0.25, 0.25, 0.25, 0.25),
        "heavy_tail_light": (0.80, 0.05, 0.05, 0.10),
        "heavy_tail_strong": (0.05, 0.05, 0.10, 0.80),
        # Paper Types 1..4 at pdf positions 0..3: ~(0.0575, 0.4425, 0.4425, 0.0575).
        "normal": normal_probabilities([0, 1, 2, 3]),
        # The code samples code name k with pdf(k); in paper order the names are Type_0, Type_3,
        # Type_2, Type_1, so the positions are 0, 3, 2, 1: ~(0.0575, 0.0575, 0.4425, 0.4425).
        "normal_as_coded": normal_probabilities([0, 3, 2, 1]),
    }
)
"""Population name -> probability of each tier, in paper type order."""

SAMPLING_MODES = ("exact", "iid")


def largest_remainder_counts(probabilities: Sequence[float], total: int) -> list[int]:
    """Integer counts summing to ``total``, each within one of ``p * total``.

    Floors first, then one more for the largest remainders (ties to the earlier tier).
    """
    shares = [p * total for p in probabilities]
    counts = [math.floor(share + 1e-9) for share in shares]
    order = sorted(range(len(shares)), key=lambda i: (-(shares[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


class DistributionRanks(RankPolicy):
    """Each client gets one of ``tiers`` with the population's probabilities.

    Parameters
    ----------
    population
        ``uniform``, ``heavy_tail_light``, ``heavy_tail_strong``, ``normal`` or
        ``normal_as_coded`` (see the module docstring).
    tiers
        Four tiers in paper Type 1..4 order; default :data:`FLEXLORA_TIERS`.
    seed
        Seeds the draw; same seed and client count, same allocation.
    sampling
        ``exact`` (fixed counts, shuffled) or ``iid`` (independent draws, as the reference).
    """

    name = "distribution"

    def __init__(
        self,
        population: str = "uniform",
        tiers: Sequence[int | str | dict[str, Any] | RankTier] | None = None,
        seed: int = 0,
        sampling: str = "exact",
    ) -> None:
        super().__init__()
        if not isinstance(population, str) or population not in POPULATIONS:
            close = difflib.get_close_matches(str(population), POPULATIONS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"population {population!r} is unknown{hint}; valid: {', '.join(POPULATIONS)}"
            )
        if sampling not in SAMPLING_MODES:
            raise ConfigError(
                f"sampling must be one of {', '.join(SAMPLING_MODES)}, got {sampling!r}"
            )
        probabilities = POPULATIONS[population]
        if tiers is None:
            parsed = list(FLEXLORA_TIERS)
        elif isinstance(tiers, str | bytes) or not isinstance(tiers, Sequence):
            raise ConfigError(f"tiers must be a list of {len(probabilities)} tiers, got {tiers!r}")
        else:
            parsed = [RankTier.parse(value, f"tiers[{i}]") for i, value in enumerate(tiers)]
        if len(parsed) != len(probabilities):
            raise ConfigError(
                f"tiers must list {len(probabilities)} tiers (paper Types 1 to 4), "
                f"got {len(parsed)}"
            )
        self.population = population
        self.tiers = tuple(parsed)
        self.probabilities = probabilities
        self.seed = check_seed(seed)
        self.sampling = sampling

    def options(self) -> dict[str, Any]:
        return {
            "population": self.population,
            "tiers": [tier.to_config() for tier in self.tiers],
            "seed": self.seed,
            "sampling": self.sampling,
        }

    def tier_indices(self, num_clients: int) -> list[int]:
        """Each client's index into ``tiers`` (0 = paper Type 1)."""
        num_clients = check_num_clients(num_clients)
        rng = np.random.default_rng(self.seed)
        if self.sampling == "exact":
            counts = largest_remainder_counts(self.probabilities, num_clients)
            ordered = np.repeat(np.arange(len(counts)), counts)
            return [int(i) for i in rng.permutation(ordered)]
        # As the reference: one uniform draw per client against cumulative thresholds, so
        # u < 0.80 is Type 1 under heavy_tail_light.
        thresholds = np.cumsum(self.probabilities)
        draws = np.searchsorted(thresholds, rng.random(num_clients), side="right")
        return [int(i) for i in np.minimum(draws, len(self.tiers) - 1)]

    def _allocate(self, num_clients: int) -> list[RankTier]:
        return [self.tiers[i] for i in self.tier_indices(num_clients)]
