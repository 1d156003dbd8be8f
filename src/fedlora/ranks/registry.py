"""Rank policies by name: ``get_rank_policy("proportion", fraction=0.2, seed=1)``."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from typing import Any

from fedlora.errors import ConfigError, UnknownNameError
from fedlora.ranks.distribution import DistributionRanks
from fedlora.ranks.explicit import ListRanks
from fedlora.ranks.fixed import FixedRanks
from fedlora.ranks.loss_based import LossBasedRanks
from fedlora.ranks.policy import RankPolicy
from fedlora.ranks.proportion import ProportionRanks

_REGISTRY: dict[str, type[RankPolicy]] = {
    cls.name: cls
    for cls in (FixedRanks, ListRanks, ProportionRanks, DistributionRanks, LossBasedRanks)
}


def available_rank_policies() -> list[str]:
    """The registered rank-policy names, sorted."""
    return sorted(_REGISTRY)


def rank_policy_class(name: str) -> type[RankPolicy]:
    """The class registered as ``name`` (``-`` and case ignored); a typo lists the valid names."""
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else name
    try:
        return _REGISTRY[key]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(key), _REGISTRY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        valid = ", ".join(available_rank_policies())
        raise UnknownNameError(
            f"unknown rank policy {name!r}{hint}; valid names: {valid}"
        ) from None


def rank_policy_options(name: str) -> list[str]:
    """The keyword options the rank policy ``name`` accepts, in signature order."""
    signature = inspect.signature(rank_policy_class(name).__init__)
    return [p for p in signature.parameters if p != "self"]


def get_rank_policy(name: str, **options: Any) -> RankPolicy:
    """Build the rank policy ``name``; unknown or missing options are one-line ``ConfigError``s."""
    cls = rank_policy_class(name)
    parameters = inspect.signature(cls.__init__).parameters
    valid = [p for p in parameters if p != "self"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        close = difflib.get_close_matches(unknown[0], valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"rank policy {cls.name!r} has no option {unknown[0]!r}{hint}; "
            f"its options: {', '.join(valid)}"
        )
    missing = [
        p for p in valid if parameters[p].default is inspect.Parameter.empty and p not in options
    ]
    if missing:
        raise ConfigError(f"rank policy {cls.name!r} needs the option {missing[0]!r}")
    return cls(**options)


def rank_policy_from_state(state: Mapping[str, Any]) -> RankPolicy:
    """Rebuilds a policy and its allocation from :meth:`RankPolicy.state_dict` output (resume)."""
    if "policy" not in state or "options" not in state:
        raise ConfigError("rank policy state needs the keys 'policy' and 'options'")
    policy = get_rank_policy(state["policy"], **state["options"])
    policy.load_state_dict(state)
    return policy
