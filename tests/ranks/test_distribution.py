"""FlexLoRA populations: probabilities against the reference code, exact and iid sampling."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedlora.errors import ConfigError
from fedlora.ranks import (
    FLEXLORA_TIERS,
    POPULATIONS,
    DistributionRanks,
    largest_remainder_counts,
    normal_probabilities,
)

# The released code (FederatedScope branch FlexLoRA, main.py), transcribed: its type table
# (attention rank, MLP rank) by code name, and each population's probability by code name.
CODE_TYPES = {"Type_0": (8, 8), "Type_1": (200, 200), "Type_2": (30, 200), "Type_3": (30, 30)}
CODE_HEAVY_TAIL = {"Type_0": 0.80, "Type_1": 0.10, "Type_2": 0.05, "Type_3": 0.05}
CODE_HEAVY_TAIL_STRONG = {"Type_1": 0.80, "Type_2": 0.10, "Type_3": 0.05, "Type_0": 0.05}


def code_normal() -> dict[str, float]:
    """``p = norm.pdf([0, 3, 2, 1], 1.5, 0.7); p /= p.sum(); choice([0, 3, 2, 1], p=p)``."""
    positions = [0, 3, 2, 1]
    pdf = [
        math.exp(-((x - 1.5) ** 2) / (2 * 0.7**2)) / (0.7 * math.sqrt(2 * math.pi))
        for x in positions
    ]
    return {f"Type_{x}": p / sum(pdf) for x, p in zip(positions, pdf, strict=True)}


def in_paper_order(by_code_name: dict[str, float]) -> list[float]:
    """Reorders code-name probabilities by the (attention, MLP) ranks of FLEXLORA_TIERS."""
    paper_ranks = [
        (
            tier.rank_for("model.layers.0.self_attn.q_proj"),
            tier.rank_for("model.layers.0.mlp.up_proj"),
        )
        for tier in FLEXLORA_TIERS
    ]
    code_name = {ranks: name for name, ranks in CODE_TYPES.items()}
    return [by_code_name[code_name[ranks]] for ranks in paper_ranks]


def test_flexlora_tiers_are_the_paper_types() -> None:
    assert [tier.name for tier in FLEXLORA_TIERS] == ["r8", "r30", "attention30-mlp200", "r200"]


@pytest.mark.parametrize(
    ("population", "code"),
    [
        ("heavy_tail_light", CODE_HEAVY_TAIL),
        ("heavy_tail_strong", CODE_HEAVY_TAIL_STRONG),
        ("normal_as_coded", code_normal()),
    ],
)
def test_populations_match_the_reference_code(population: str, code: dict[str, float]) -> None:
    assert POPULATIONS[population] == pytest.approx(in_paper_order(code), abs=1e-12)


def test_normal_is_the_documented_bell_over_paper_types() -> None:
    assert POPULATIONS["normal"] == pytest.approx([0.0575, 0.4425, 0.4425, 0.0575], abs=5e-5)
    # The reference code evaluates the pdf at code names, so its mass sits on Types 3 and 4.
    assert POPULATIONS["normal_as_coded"] == pytest.approx(
        [0.0575, 0.0575, 0.4425, 0.4425], abs=5e-5
    )
    # Intended construction: the pdf at positions 0..3 in paper (resource) order.
    pdf = [math.exp(-((x - 1.5) ** 2) / (2 * 0.7**2)) for x in range(4)]
    assert POPULATIONS["normal"] == pytest.approx([d / sum(pdf) for d in pdf], abs=1e-12)
    assert normal_probabilities([1, 2]) == pytest.approx([0.5, 0.5])  # symmetric about mu = 1.5


def test_every_population_is_a_distribution() -> None:
    for probabilities in POPULATIONS.values():
        assert len(probabilities) == 4
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-12)
        assert min(probabilities) > 0


@pytest.mark.parametrize("population", sorted(POPULATIONS))
@pytest.mark.parametrize("num_clients", [1, 7, 100, 1613])
def test_exact_sampling_has_largest_remainder_counts(population: str, num_clients: int) -> None:
    policy = DistributionRanks(population, seed=5)
    counts = Counter(policy.tier_indices(num_clients))
    expected = largest_remainder_counts(POPULATIONS[population], num_clients)
    assert [counts[i] for i in range(4)] == expected
    assert sum(expected) == num_clients


def test_exact_counts_for_round_populations() -> None:
    counts = Counter(t.name for t in DistributionRanks("heavy_tail_light").assign(100))
    assert counts == {"r8": 80, "r30": 5, "attention30-mlp200": 5, "r200": 10}
    counts = Counter(t.name for t in DistributionRanks("normal").assign(100))
    assert counts == {"r8": 6, "r30": 44, "attention30-mlp200": 44, "r200": 6}


@given(
    probabilities=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=6).filter(
        lambda w: sum(w) > 0
    ),
    total=st.integers(min_value=0, max_value=2000),
)
def test_largest_remainder_is_within_one(probabilities: list[int], total: int) -> None:
    p = [w / sum(probabilities) for w in probabilities]
    counts = largest_remainder_counts(p, total)
    assert sum(counts) == total
    assert all(abs(c - q * total) < 1 for c, q in zip(counts, p, strict=True))


@pytest.mark.parametrize("sampling", ["exact", "iid"])
def test_same_seed_same_allocation(sampling: str) -> None:
    a = DistributionRanks("uniform", seed=11, sampling=sampling).assign(200)
    assert DistributionRanks("uniform", seed=11, sampling=sampling).assign(200) == a
    assert DistributionRanks("uniform", seed=12, sampling=sampling).assign(200) != a
    policy = DistributionRanks("uniform", seed=11, sampling=sampling)
    assert policy.assign(200) == policy.assign(200)


def test_exact_sampling_shuffles_clients() -> None:
    indices = DistributionRanks("uniform", seed=0).tier_indices(400)
    assert indices != sorted(indices)
    first_quarter = Counter(indices[:100])
    assert len(first_quarter) == 4  # every tier appears among the first 100 clients


def test_iid_client_type_does_not_depend_on_client_count() -> None:
    policy = DistributionRanks("heavy_tail_strong", seed=2, sampling="iid")
    assert policy.tier_indices(500)[:50] == policy.tier_indices(50)


def within_binomial_bounds(counts: Counter[int], probabilities: tuple[float, ...], n: int) -> bool:
    """Each count within 5 binomial standard deviations of n·p (false alarm < 1e-5 per test)."""
    return all(
        abs(counts[i] - n * p) <= 5 * math.sqrt(n * p * (1 - p))
        for i, p in enumerate(probabilities)
    )


@pytest.mark.parametrize("population", sorted(POPULATIONS))
def test_iid_frequencies_match_the_population(population: str) -> None:
    n = 20_000
    counts = Counter(DistributionRanks(population, seed=123, sampling="iid").tier_indices(n))
    assert within_binomial_bounds(counts, POPULATIONS[population], n)
    # The bound is tight enough to tell populations apart.
    others = [p for name, p in POPULATIONS.items() if name != population]
    assert not any(within_binomial_bounds(counts, p, n) for p in others)


def test_iid_thresholds_follow_the_reference_order() -> None:
    # The reference draws u ~ U[0, 1) and picks Type 1 when u < 0.80 (heavy_tail): the first tier
    # must be the 80 % one, not a tier chosen by sorted probability.
    counts = Counter(
        DistributionRanks("heavy_tail_light", seed=0, sampling="iid").tier_indices(5000)
    )
    assert counts.most_common(1)[0][0] == 0
    counts = Counter(
        DistributionRanks("heavy_tail_strong", seed=0, sampling="iid").tier_indices(5000)
    )
    assert counts.most_common(1)[0][0] == 3


def test_custom_tiers() -> None:
    policy = DistributionRanks("uniform", tiers=[1, 2, 4, {"attention": 4, "mlp": 8}])
    assert {t.max_rank for t in policy.assign(8)} == {1, 2, 4, 8}
    with pytest.raises(ConfigError, match="tiers must list 4 tiers"):
        DistributionRanks("uniform", tiers=[8, 30])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"population": "heavy_tail"}, "did you mean 'heavy_tail_light'"),
        ({"population": 3}, "population 3 is unknown"),
        ({"sampling": "stratified"}, "sampling must be one of exact, iid"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"tiers": "8,30"}, "tiers must be a list"),
    ],
)
def test_bad_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DistributionRanks(**options)  # type: ignore[arg-type]
