"""Rank policies: which LoRA rank tier each client trains (pure python/numpy, seeded RNGs)."""

from fedlora.ranks.distribution import (
    FLEXLORA_TIERS,
    POPULATIONS,
    DistributionRanks,
    largest_remainder_counts,
    normal_probabilities,
)
from fedlora.ranks.explicit import ListRanks
from fedlora.ranks.fixed import FixedRanks
from fedlora.ranks.loss_based import LossBasedRanks
from fedlora.ranks.policy import RankPolicy, Scoring
from fedlora.ranks.proportion import ProportionRanks
from fedlora.ranks.registry import (
    available_rank_policies,
    get_rank_policy,
    rank_policy_class,
    rank_policy_from_state,
    rank_policy_options,
)
from fedlora.ranks.tier import GROUP_ALIASES, RankTier

__all__ = [
    "FLEXLORA_TIERS",
    "GROUP_ALIASES",
    "POPULATIONS",
    "DistributionRanks",
    "FixedRanks",
    "ListRanks",
    "LossBasedRanks",
    "ProportionRanks",
    "RankPolicy",
    "RankTier",
    "Scoring",
    "available_rank_policies",
    "get_rank_policy",
    "largest_remainder_counts",
    "normal_probabilities",
    "rank_policy_class",
    "rank_policy_from_state",
    "rank_policy_options",
]
