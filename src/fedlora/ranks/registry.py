"""Rank policies by name: ``get_rank_policy("proportion", fraction=0.2, seed=1)``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedlora.errors import ConfigError
from fedlora.ranks.distribution import DistributionRanks
from fedlora.ranks.explicit import ListRanks
from fedlora.ranks.fixed import FixedRanks
from fedlora.ranks.loss_based import LossBasedRanks
from fedlora.ranks.policy import RankPolicy
from fedlora.ranks.proportion import ProportionRanks
from fedlora.registry import Registry

_POLICIES: Registry[RankPolicy] = Registry(
    "rank policy", (FixedRanks, ListRanks, ProportionRanks, DistributionRanks, LossBasedRanks)
)


def available_rank_policies() -> list[str]:
    """The registered rank-policy names, sorted."""
    return _POLICIES.names()


def rank_policy_class(name: str) -> type[RankPolicy]:
    """The class registered as ``name`` (``-`` and case ignored); a typo lists the valid names."""
    return _POLICIES.get_class(name)


def rank_policy_options(name: str) -> list[str]:
    """The keyword options the rank policy ``name`` accepts, in signature order."""
    return list(_POLICIES.options(name))


def get_rank_policy(name: str, **options: Any) -> RankPolicy:
    """Build the rank policy ``name``; unknown or missing options are one-line ``ConfigError``s."""
    return _POLICIES.build(name, **options)


def rank_policy_from_state(state: Mapping[str, Any]) -> RankPolicy:
    """Rebuilds a policy and its allocation from :meth:`RankPolicy.state_dict` output (resume)."""
    if "policy" not in state or "options" not in state:
        raise ConfigError("rank policy state needs the keys 'policy' and 'options'")
    policy = get_rank_policy(state["policy"], **state["options"])
    policy.load_state_dict(state)
    return policy
