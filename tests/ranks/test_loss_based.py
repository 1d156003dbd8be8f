"""Loss-based allocation (Byun & Lee): everyone low, the lowest losses promoted exactly once."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedlora.errors import ConfigError, FedloraError
from fedlora.ranks import LossBasedRanks


def high_ids(policy: LossBasedRanks) -> list[int]:
    return [i for i, tier in enumerate(policy.allocation or []) if tier == policy.high]


def test_everyone_starts_low() -> None:
    policy = LossBasedRanks()
    assert {tier.max_rank for tier in policy.assign(100)} == {5}
    assert policy.promoted_clients is None


def test_promotes_the_lowest_losses_once() -> None:
    policy = LossBasedRanks(low=5, high=20, fraction=0.1)
    policy.assign(20)
    losses = {client: 1.0 + ((client * 7) % 20) / 10 for client in range(20)}  # a permutation
    new = policy.observe_losses(losses)
    best_two = sorted(sorted(losses, key=losses.__getitem__)[:2])
    assert new is not None
    assert [i for i, tier in enumerate(new) if tier.max_rank == 20] == best_two
    assert policy.promoted_clients == best_two == high_ids(policy)
    # Later observations change nothing, even if other clients now look better.
    assert policy.observe_losses({c: -float(c) for c in range(20)}) is None
    assert high_ids(policy) == best_two


def test_promotes_a_share_of_the_observed_clients_only() -> None:
    policy = LossBasedRanks(fraction=0.5)
    policy.assign(10)  # half of the 3 observed (1.5, rounded half up) is 2, not half of all 10
    new = policy.observe_losses({7: 0.3, 2: 0.1, 9: 0.2})
    assert new is not None
    assert [i for i, tier in enumerate(new) if tier == policy.high] == [2, 9]
    assert policy.promoted_clients == [2, 9] == high_ids(policy)
    assert all(tier == policy.low for i, tier in enumerate(new) if i not in (2, 9))


def test_participation_equal_to_the_fraction_does_not_promote_every_participant() -> None:
    # The reason for the share-of-the-observed rule: 10 % of 100 clients took part in round 1
    # and the fraction is 10 %, so only the best participant is promoted, not all ten.
    policy = LossBasedRanks(fraction=0.1)
    policy.assign(100)
    participants = {client: 1.0 + (client % 7) / 10 for client in range(5, 100, 10)}
    participants[45] = 0.01
    assert policy.observe_losses(participants) is not None
    assert policy.promoted_clients == [45] == high_ids(policy)


def test_partial_observation_keeps_the_best_of_the_observed() -> None:
    policy = LossBasedRanks(fraction=0.3)
    policy.assign(30)  # 30 % of the 8 observed is 2.4, so 2 (30 % of all 30 would be 9)
    observed = {3: 0.9, 4: 0.2, 11: 0.5, 12: 0.1, 20: 0.7, 21: 0.3, 28: 0.8, 29: math.inf}
    policy.observe_losses(observed)
    assert high_ids(policy) == [4, 12]


def test_infinite_losses_count_as_observed_but_come_last() -> None:
    policy = LossBasedRanks(fraction=0.5)
    policy.assign(10)  # 4 observed, 2 promoted: the finite one, then one of the tied infinities
    policy.observe_losses({1: math.inf, 3: 2.0, 6: math.inf, 8: math.inf})
    promoted = policy.promoted_clients or []
    assert len(promoted) == 2
    assert 3 in promoted
    assert set(promoted) - {3} <= {1, 6, 8}


@pytest.mark.parametrize(
    ("fraction", "observed", "expected"),
    [
        (0.5, 1, 1),  # 0.5 rounds up (Python's round gives 0)
        (0.25, 2, 1),  # 0.5 again
        (0.5, 5, 3),  # 2.5 rounds up (round gives 2)
        (0.5, 3, 2),  # 1.5
        (0.58, 25, 15),  # 0.58 * 25 == 14.499999999999998 in floating point
        (0.3, 8, 2),  # 2.4 rounds down
        (0.1, 16, 2),  # 1.6 rounds up
        (1.0, 7, 7),
    ],
)
@pytest.mark.parametrize("num_clients", [25, 40, 1000])
def test_count_is_the_fraction_of_the_observed_rounded_half_up(
    fraction: float, observed: int, expected: int, num_clients: int
) -> None:
    # The observed clients are spread over the range and given decreasing losses, so the
    # promoted ones are the last `expected` of them whatever the total number of clients.
    ids = [round(i * (num_clients - 1) / max(observed - 1, 1)) for i in range(observed)]
    assert len(set(ids)) == observed
    losses = {client: float(observed - i) for i, client in enumerate(ids)}
    policy = LossBasedRanks(fraction=fraction)
    policy.assign(num_clients)
    assert policy.observe_losses(losses) is not None
    assert policy.promoted_clients == ids[observed - expected :] == high_ids(policy)


def test_a_share_that_rounds_to_zero_promotes_nobody_and_is_final() -> None:
    policy = LossBasedRanks(fraction=0.1)
    policy.assign(100)  # 10 % of 4 observed is 0.4: nobody (10 % of all 100 would be 10)
    assert policy.observe_losses({0: 0.1, 1: 0.2, 2: 0.3, 3: 0.4}) is None
    assert policy.promoted_clients == []
    assert high_ids(policy) == []
    assert policy.observe_losses(dict.fromkeys(range(100), 0.1)) is None
    assert high_ids(policy) == []


def test_empty_observation_is_not_the_one_promotion() -> None:
    policy = LossBasedRanks(fraction=0.5)
    policy.assign(5)
    assert policy.observe_losses({}) is None
    assert policy.promoted_clients is None
    assert policy.observe_losses({4: 0.1, 0: 0.2}) is not None
    assert high_ids(policy) == [4]
    assert policy.observe_losses({0: 0.0, 1: 0.0, 2: 0.0}) is None
    assert high_ids(policy) == [4]


def test_zero_fraction_promotes_nobody_and_is_final() -> None:
    policy = LossBasedRanks(fraction=0.0)
    policy.assign(10)
    assert policy.observe_losses(dict.fromkeys(range(10), 1.0)) is None
    assert policy.promoted_clients == []
    assert high_ids(policy) == []


def test_ties_are_broken_by_the_seed_deterministically() -> None:
    def promoted(seed: int) -> list[int]:
        policy = LossBasedRanks(fraction=0.1, seed=seed)
        policy.assign(100)
        policy.observe_losses(dict.fromkeys(range(100), 0.5))
        return policy.promoted_clients or []

    assert promoted(1) == promoted(1)
    assert len(promoted(1)) == 10
    assert promoted(1) != promoted(2)
    assert promoted(1) != list(range(10))  # ties do not favour low ids


def test_ties_among_observed_clients_never_promote_an_unobserved_one() -> None:
    observed = dict.fromkeys(range(1, 100, 3), 0.5)  # 33 observed, all tied: 3 promoted
    for seed in range(5):
        policy = LossBasedRanks(fraction=0.1, seed=seed)
        policy.assign(100)
        policy.observe_losses(observed)
        promoted = policy.promoted_clients or []
        assert len(promoted) == 3
        assert set(promoted) <= set(observed)


def test_assign_starts_over() -> None:
    policy = LossBasedRanks(fraction=0.5)
    policy.assign(4)
    policy.observe_losses({0: 0.1, 1: 0.2})
    assert policy.promoted_clients == [0]
    assert {t.max_rank for t in policy.assign(4)} == {5}
    assert policy.promoted_clients is None
    assert policy.observe_losses({2: 0.1, 3: 0.2, 1: 0.3}) is not None
    assert high_ids(policy) == [2, 3]


def test_probe_flag_defaults_to_scoring_every_client() -> None:
    # Byun & Lee rank all clients; without a probe only round-1 participants are scored.
    probing, plain = LossBasedRanks(), LossBasedRanks(probe=False)
    probing.assign(4)
    plain.assign(4)
    assert [probing.wants_scores(r) for r in (0, 1, 2)] == [True, False, False]
    assert [plain.wants_scores(r) for r in (0, 1, 2)] == [False, True, False]
    plain.observe_losses({0: 1.0, 1: 2.0})
    assert plain.wants_scores(1) is False  # once promoted, never asks again


@pytest.mark.parametrize(
    ("losses", "message"),
    [
        ({10: 0.1}, "client index 10 is outside 0..9"),
        ({-1: 0.1}, "outside"),
        ({"3": 0.1}, "loss keys must be client indices"),
        ({3: math.nan}, "client 3: loss is NaN"),
        ({3: "low"}, "client 3: loss must be a number"),
    ],
)
def test_bad_losses_are_refused_without_promoting(
    losses: dict[object, object], message: str
) -> None:
    policy = LossBasedRanks()
    policy.assign(10)
    with pytest.raises(FedloraError, match=message):
        policy.observe_losses(losses)  # type: ignore[arg-type]
    assert policy.promoted_clients is None


def test_observe_before_assign_is_an_error() -> None:
    with pytest.raises(FedloraError, match="call assign"):
        LossBasedRanks().observe_losses({0: 1.0})


@given(
    losses=st.lists(
        st.floats(min_value=0, max_value=10, allow_nan=False), min_size=1, max_size=60, unique=True
    ),
    fraction=st.floats(min_value=0, max_value=1),
)
def test_promoted_set_is_exactly_the_k_lowest(losses: list[float], fraction: float) -> None:
    n = len(losses)
    policy = LossBasedRanks(fraction=fraction)
    policy.assign(n)
    policy.observe_losses(dict(enumerate(losses)))
    k = int(fraction * n + 0.5 + 1e-9)
    assert high_ids(policy) == sorted(sorted(range(n), key=losses.__getitem__)[:k])
    promoted = [losses[i] for i in high_ids(policy)]
    rest = [losses[i] for i in range(n) if i not in high_ids(policy)]
    assert not promoted or not rest or max(promoted) < min(rest)


@given(
    data=st.data(),
    num_clients=st.integers(min_value=1, max_value=60),
    fraction=st.floats(min_value=0, max_value=1),
)
def test_partial_observation_promotes_exactly_the_k_lowest_observed(
    data: st.DataObject, num_clients: int, fraction: float
) -> None:
    observed = data.draw(
        st.lists(
            st.integers(min_value=0, max_value=num_clients - 1),
            min_size=1,
            max_size=num_clients,
            unique=True,
        )
    )
    values = data.draw(
        st.lists(
            st.floats(min_value=0, max_value=10, allow_nan=False),
            min_size=len(observed),
            max_size=len(observed),
            unique=True,
        )
    )
    losses = dict(zip(observed, values, strict=True))
    policy = LossBasedRanks(fraction=fraction)
    policy.assign(num_clients)
    new = policy.observe_losses(losses)
    k = int(fraction * len(observed) + 0.5 + 1e-9)
    expected = sorted(sorted(observed, key=losses.__getitem__)[:k])
    assert policy.promoted_clients == expected == high_ids(policy)
    assert (new is None) == (k == 0)
    if new is not None:
        assert new == policy.allocation
    rest = [losses[c] for c in observed if c not in expected]
    assert not expected or not rest or max(losses[c] for c in expected) < min(rest)
    # Promotion happened (even if of nobody): later observations change nothing.
    assert policy.observe_losses(dict.fromkeys(range(num_clients), -1.0)) is None
    assert high_ids(policy) == expected


def test_scoring_options_are_validated_and_saved() -> None:
    policy = LossBasedRanks(score_on="local", score_rows=50)
    assert (policy.scoring.on, policy.scoring.rows) == ("local", 50)
    assert policy.options()["score_on"] == "local" and policy.options()["score_rows"] == 50
    assert LossBasedRanks().scoring.on == "server"
    with pytest.raises(ConfigError, match="score_on must be one of server, local, got 'both'"):
        LossBasedRanks(score_on="both")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="score_rows must be a positive integer, got 0"):
        LossBasedRanks(score_rows=0)


def test_possible_tiers_include_the_promotion() -> None:
    policy = LossBasedRanks(low=2, high=9)
    policy.assign(3)
    assert sorted({t.max_rank for t in policy.possible_tiers()}) == [2, 9]
