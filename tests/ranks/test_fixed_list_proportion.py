"""fixed, list and proportion policies: exact shapes, seeded determinism, edge fractions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedlora.errors import ConfigError
from fedlora.ranks import FixedRanks, ListRanks, ProportionRanks, RankTier


def ranks_of(allocation: list[RankTier]) -> list[int]:
    return [tier.max_rank for tier in allocation]


def test_fixed_gives_every_client_the_tier() -> None:
    assert ranks_of(FixedRanks(7).assign(4)) == [7, 7, 7, 7]
    mixed = FixedRanks({"attention": 30, "mlp": 200}).assign(3)
    assert [tier.name for tier in mixed] == ["attention30-mlp200"] * 3


def test_list_follows_client_ids_and_checks_length() -> None:
    policy = ListRanks([4, "r8", {"attention": 2, "mlp": 16}])
    assert [tier.name for tier in policy.assign(3)] == ["r4", "r8", "attention2-mlp16"]
    with pytest.raises(ConfigError, match="ranks lists 3 clients but the run has 4"):
        policy.assign(4)
    with pytest.raises(ConfigError, match=r"ranks\[1\] must be a positive integer rank"):
        ListRanks([4, 0])


def test_default_policies_never_adapt_or_probe() -> None:
    policy = FixedRanks(5)
    policy.assign(3)
    assert policy.observe_losses({0: 1.0, 1: 0.5, 2: 0.1}) is None
    assert not any(policy.wants_scores(r) for r in (0, 1, 2)) and policy.scoring is None
    assert ranks_of(policy.allocation or []) == [5, 5, 5]


@given(
    num_clients=st.integers(min_value=1, max_value=300),
    fraction=st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.5, 0.75, 1.0]),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_proportion_count_is_exact(num_clients: int, fraction: float, seed: int) -> None:
    allocation = ProportionRanks(high=20, low=5, fraction=fraction, seed=seed).assign(num_clients)
    expected_high = int(fraction * num_clients + 0.5 + 1e-9)  # round half up
    assert ranks_of(allocation).count(20) == expected_high
    assert ranks_of(allocation).count(5) == num_clients - expected_high


@pytest.mark.parametrize(
    ("fraction", "num_clients", "high"),
    [(0.1, 100, 10), (0.2, 100, 20), (0.5, 100, 50), (0.1, 5, 1), (0.15, 10, 2), (0.1, 4, 0)],
)
def test_proportion_rounds_half_up(fraction: float, num_clients: int, high: int) -> None:
    assert len(ProportionRanks(fraction=fraction).high_clients(num_clients)) == high


def test_proportion_extremes_are_homogeneous() -> None:
    assert set(ranks_of(ProportionRanks(fraction=0.0).assign(50))) == {5}
    assert set(ranks_of(ProportionRanks(fraction=1.0).assign(50))) == {20}


def test_proportion_is_seeded() -> None:
    first = ProportionRanks(fraction=0.2, seed=3).high_clients(100)
    assert ProportionRanks(fraction=0.2, seed=3).high_clients(100) == first
    again = ProportionRanks(fraction=0.2, seed=3)
    assert [i for i, r in enumerate(ranks_of(again.assign(100))) if r == 20] == first
    assert ProportionRanks(fraction=0.2, seed=4).high_clients(100) != first
    # Random choice, not the first ids: with 20 of 100 the chance of ids 0..19 is negligible.
    assert first != list(range(20))


def test_proportion_accepts_tiers() -> None:
    policy = ProportionRanks(high={"attention": 30, "mlp": 200}, low=8, fraction=0.5, seed=0)
    assert {tier.name for tier in policy.assign(10)} == {"attention30-mlp200", "r8"}


def _high(policy: ProportionRanks, num_clients: int) -> list[int]:
    return [c for c, tier in enumerate(policy.assign(num_clients)) if tier.max_rank == 20]


def test_the_high_rank_can_go_to_the_high_quality_clients() -> None:
    # Byun & Lee's premise: the clients that afford rank 20 are the ones with good data.
    exact = ProportionRanks(fraction=0.2, choose="high_quality", seed=3)
    exact.prefer([7, 2])
    assert _high(exact, 10) == [2, 7]
    more = ProportionRanks(fraction=0.4, choose="high_quality", seed=3)
    more.prefer([7, 2])
    chosen = _high(more, 10)
    assert len(chosen) == 4 and {2, 7} <= set(chosen)
    fewer = ProportionRanks(fraction=0.1, choose="high_quality", seed=3)
    fewer.prefer([7, 2])
    assert _high(fewer, 10) in ([2], [7])
    assert (
        ProportionRanks(fraction=0.2, choose="random", seed=3).wants_high_quality_clients is False
    )


def test_high_quality_choice_needs_the_high_quality_clients() -> None:
    with pytest.raises(ConfigError, match="needs a partition with high-quality clients"):
        ProportionRanks(choose="high_quality").assign(10)
    with pytest.raises(ConfigError, match="choose must be one of random, high_quality"):
        ProportionRanks(choose="best")
