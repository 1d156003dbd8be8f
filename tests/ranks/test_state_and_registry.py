"""Registry names and errors; state_dict round trips through JSON reproduce allocations."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fedlora.errors import ConfigError, FedloraError, UnknownNameError
from fedlora.ranks import (
    DistributionRanks,
    FixedRanks,
    LossBasedRanks,
    RankPolicy,
    available_rank_policies,
    get_rank_policy,
    rank_policy_from_state,
    rank_policy_options,
)

EXAMPLES: list[tuple[str, dict[str, Any]]] = [
    ("fixed", {"rank": {"attention": 30, "mlp": 200}}),
    ("list", {"ranks": [4, 8, 8, 4, 16, 4]}),
    ("proportion", {"fraction": 0.5, "seed": 9}),
    ("distribution", {"population": "normal", "seed": 4, "sampling": "iid"}),
    ("loss_based", {"fraction": 0.34, "probe": True, "seed": 2}),
]


def test_names() -> None:
    assert available_rank_policies() == [
        "distribution",
        "fixed",
        "list",
        "loss_based",
        "proportion",
    ]
    assert isinstance(get_rank_policy("Loss-Based"), LossBasedRanks)
    assert rank_policy_options("proportion") == ["high", "low", "fraction", "seed", "choose"]


@pytest.mark.parametrize(("name", "options"), EXAMPLES)
def test_state_round_trip_reproduces_the_allocation(name: str, options: dict[str, Any]) -> None:
    policy = get_rank_policy(name, **options)
    allocation = policy.assign(6)
    if isinstance(policy, LossBasedRanks):
        # 34 % of the 3 observed clients is 1.02: one promotion (34 % of all 6 would be 2).
        allocation = policy.observe_losses({5: 0.1, 1: 0.2, 3: 0.3}) or []
        assert [t.max_rank for t in allocation] == [5, 5, 5, 5, 5, 20]
    state = json.loads(json.dumps(policy.state_dict()))

    restored = get_rank_policy(name, **options)
    restored.load_state_dict(state)
    assert restored.allocation == allocation
    if isinstance(policy, LossBasedRanks):
        assert isinstance(restored, LossBasedRanks)
        assert restored.promoted_clients == policy.promoted_clients == [5]
    assert restored.describe() == policy.describe()
    assert rank_policy_from_state(state).allocation == allocation
    # A fresh assign with the same options and seed gives the same initial allocation.
    if not isinstance(policy, LossBasedRanks):
        assert get_rank_policy(name, **state["options"]).assign(6) == allocation


def test_restored_loss_policy_does_not_promote_again() -> None:
    policy = LossBasedRanks(fraction=0.5)
    policy.assign(4)
    policy.observe_losses({0: 0.5, 3: 0.1, 2: 0.9})  # half of 3 observed, rounded half up: 2
    assert policy.promoted_clients == [0, 3]
    restored = LossBasedRanks(fraction=0.5)
    restored.load_state_dict(json.loads(json.dumps(policy.state_dict())))
    assert restored.promoted_clients == [0, 3]
    assert restored.observe_losses({1: 0.0, 2: 0.0}) is None
    assert [t.max_rank for t in restored.allocation or []] == [20, 5, 5, 20]


def test_restored_loss_policy_that_promoted_nobody_stays_final() -> None:
    policy = LossBasedRanks(fraction=0.2)
    policy.assign(10)
    assert policy.observe_losses({0: 0.5, 3: 0.1}) is None  # 20 % of 2 observed rounds to 0
    restored = LossBasedRanks(fraction=0.2)
    restored.load_state_dict(json.loads(json.dumps(policy.state_dict())))
    assert restored.promoted_clients == []
    assert restored.observe_losses(dict.fromkeys(range(10), 0.0)) is None
    assert {t.max_rank for t in restored.allocation or []} == {5}


def test_restored_loss_policy_before_any_observation_still_promotes() -> None:
    policy = LossBasedRanks(fraction=0.5)
    policy.assign(6)
    restored = LossBasedRanks(fraction=0.5)
    restored.load_state_dict(json.loads(json.dumps(policy.state_dict())))
    assert restored.promoted_clients is None
    assert restored.observe_losses({4: 0.2, 1: 0.1, 2: 0.3, 5: 0.4}) is not None
    assert restored.promoted_clients == [1, 4]
    assert [t.max_rank for t in restored.allocation or []] == [5, 20, 5, 5, 20, 5]


def test_state_before_assign_round_trips() -> None:
    state = DistributionRanks("uniform").state_dict()
    restored = DistributionRanks("uniform")
    restored.load_state_dict(json.loads(json.dumps(state)))
    assert restored.allocation is None


def test_state_from_other_options_is_refused() -> None:
    policy = DistributionRanks("uniform", seed=1)
    policy.assign(10)
    with pytest.raises(ConfigError, match="options changed"):
        DistributionRanks("uniform", seed=2).load_state_dict(policy.state_dict())
    with pytest.raises(ConfigError, match="saved by 'distribution', not 'fixed'"):
        FixedRanks(8).load_state_dict(policy.state_dict())
    broken = policy.state_dict() | {"assignment": [0] * 9}
    with pytest.raises(FedloraError, match="invalid tier assignment"):
        DistributionRanks("uniform", seed=1).load_state_dict(broken)


def test_describe_is_one_line() -> None:
    policy = get_rank_policy("distribution", population="heavy_tail_light")
    assert policy.describe() == (
        "distribution(population=heavy_tail_light, tiers=[8, 30, attention30-mlp200, 200], "
        "seed=0, sampling=exact)"
    )
    policy.assign(20)
    assert policy.describe().endswith(": 20 clients r8×16, r30×1, attention30-mlp200×1, r200×2")
    long_list = get_rank_policy("list", ranks=[5] * 100)
    long_list.assign(100)
    assert long_list.describe() == "list(ranks=[100 items]): 100 clients r5×100"


def test_unknown_name_suggests() -> None:
    with pytest.raises(UnknownNameError, match=r"did you mean 'proportion'\?\); valid names: "):
        get_rank_policy("proportoin")
    with pytest.raises(UnknownNameError, match="valid names: distribution, fixed, list"):
        get_rank_policy("zzz")


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        (
            "proportion",
            {"frac": 0.1},
            "no option 'frac' (did you mean 'fraction'?); its options: high, low, fraction, seed",
        ),
        ("fixed", {}, "rank policy 'fixed' needs the option 'rank'"),
        ("fixed", {"rank": 0}, "rank must be a positive integer rank, got 0"),
        ("list", {"ranks": []}, "ranks must be a non-empty list"),
        ("proportion", {"fraction": 1.2}, "fraction must be a number in [0, 1], got 1.2"),
        ("proportion", {"fraction": -0.1}, "fraction must be a number in [0, 1]"),
        ("proportion", {"seed": None}, "seed must be a non-negative integer, got None"),
        ("loss_based", {"high": -3}, "high must be a positive integer rank"),
        ("loss_based", {"probe": "yes"}, "probe must be true or false"),
        ("distribution", {"population": "gaussian"}, "population 'gaussian' is unknown"),
    ],
)
def test_bad_options_are_one_line_config_errors(
    name: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        get_rank_policy(name, **options)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_assign_refuses_bad_client_counts() -> None:
    policy: RankPolicy = FixedRanks(8)
    for bad in (0, -3, 2.0, True):
        with pytest.raises(ConfigError, match="num_clients must be a positive integer"):
            policy.assign(bad)  # type: ignore[arg-type]
