"""Partitioners: structural properties for any input, skew where promised, errors, registry."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedlora.data import (
    DirichletPartitioner,
    IidPartitioner,
    NaturalPartitioner,
    Partitioner,
    QualityPartitioner,
    SizeSkewPartitioner,
    available_partitioners,
    get_partitioner,
    label_distribution,
    partitioner_options,
)
from fedlora.errors import ConfigError, UnknownNameError

COVERING: dict[str, dict[str, Any]] = {
    "iid": {},
    "dirichlet": {"alpha": 1.0, "min_size": 1, "max_retries": 1000},
    "size_skew": {"sigma": 1.5},
    "size_skew_powerlaw": {"distribution": "powerlaw", "shape": 0.8},
    "quality": {"high_quality_fraction": 0.3},
}


def build(key: str, seed: int) -> Partitioner:
    return get_partitioner(key.removesuffix("_powerlaw"), seed=seed, **COVERING[key])


def random_labels(seed: int, n: int, num_classes: int) -> npt.NDArray[np.int64]:
    return np.random.default_rng(seed).integers(0, num_classes, n)


def client_entropies(
    labels: npt.NDArray[np.int64], parts: list[Any], num_classes: int
) -> npt.NDArray[np.float64]:
    """Each client's label entropy in nats: 0 for one class, log(num_classes) for uniform."""
    counts = label_distribution(labels, parts, num_classes).astype(np.float64)
    p = counts / counts.sum(axis=1, keepdims=True)
    safe = np.where(p > 0, p, 1.0)
    entropies: npt.NDArray[np.float64] = -(p * np.log(safe)).sum(axis=1)
    return entropies


def mean_entropy(labels: npt.NDArray[np.int64], parts: list[Any], num_classes: int) -> float:
    return float(client_entropies(labels, parts, num_classes).mean())


@pytest.mark.parametrize("key", sorted(COVERING))
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(40, 400),
    num_classes=st.integers(1, 8),
    num_clients=st.integers(1, 8),
)
def test_partition_is_disjoint_complete_nonempty_and_deterministic(
    key: str, seed: int, n: int, num_classes: int, num_clients: int
) -> None:
    labels = random_labels(seed, n, num_classes)
    parts = build(key, seed).partition(labels, num_clients)
    assert len(parts) == num_clients
    assert all(len(p) > 0 for p in parts)
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)
    merged = np.concatenate(parts)
    assert np.array_equal(np.sort(merged), np.arange(n))  # complete and disjoint
    again = build(key, seed).partition(labels, num_clients)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


@pytest.mark.parametrize("key", sorted(COVERING))
def test_the_seed_changes_the_partition(key: str) -> None:
    labels = random_labels(0, 300, 4)
    first = build(key, 0).partition(labels, 5)
    second = build(key, 1).partition(labels, 5)
    assert any(not np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_iid_sizes_differ_by_at_most_one() -> None:
    sizes = [len(p) for p in IidPartitioner(seed=0).partition(np.zeros(103, dtype=int), 10)]
    assert max(sizes) - min(sizes) <= 1


@given(seed=st.integers(0, 2**31))
def test_small_dirichlet_alpha_is_more_skewed_than_large(seed: int) -> None:
    labels = random_labels(seed, 1000, 10)
    skewed = DirichletPartitioner(alpha=0.05, seed=seed, min_size=1, max_retries=1000)
    balanced = DirichletPartitioner(alpha=100.0, seed=seed, min_size=1)
    low = mean_entropy(labels, skewed.partition(labels, 8), 10)
    high = mean_entropy(labels, balanced.partition(labels, 8), 10)
    assert low < high


def test_dirichlet_min_size_is_met_or_a_clear_error() -> None:
    labels = random_labels(0, 600, 4)
    parts = DirichletPartitioner(alpha=0.5, seed=0, min_size=20).partition(labels, 6)
    assert min(len(p) for p in parts) >= 20
    hopeless = DirichletPartitioner(alpha=0.01, seed=0, min_size=30, max_retries=3)
    with pytest.raises(ConfigError, match="no draw in 3 tries"):
        hopeless.partition(labels, 20)
    with pytest.raises(ConfigError, match="exceeds 600 samples"):
        DirichletPartitioner(alpha=1.0, seed=0, min_size=100).partition(labels, 7)


@given(seed=st.integers(0, 2**31))
def test_quality_high_clients_have_more_balanced_labels(seed: int) -> None:
    labels = random_labels(seed, 2000, 10)
    partitioner = QualityPartitioner(seed=seed, high_quality_fraction=0.2)
    result = partitioner.split(labels, 20)
    entropy = client_entropies(labels, result.partitions, 10)
    high = np.zeros(20, dtype=bool)
    high[result.high_quality_clients] = True
    assert high.sum() == 4
    assert entropy[high].mean() > entropy[~high].mean()


@given(seed=st.integers(0, 2**31), num_clients=st.integers(1, 60), fraction=st.floats(0.0, 1.0))
def test_quality_client_choice_depends_only_on_seed_and_count(
    seed: int, num_clients: int, fraction: float
) -> None:
    partitioner = QualityPartitioner(seed=seed, high_quality_fraction=fraction)
    chosen = partitioner.high_quality_clients(num_clients)
    expected = round(fraction * num_clients)
    assert len(chosen) == (max(1, expected) if fraction > 0 else 0)
    assert chosen == sorted(set(chosen))
    assert all(0 <= c < num_clients for c in chosen)
    labels = random_labels(seed, 3 * num_clients, 3)
    result = partitioner.split(labels, num_clients)
    assert result.high_quality_clients == chosen
    plain = partitioner.partition(labels, num_clients)
    assert all(np.array_equal(a, b) for a, b in zip(plain, result.partitions, strict=True))


@given(seed=st.integers(0, 2**31))
def test_size_skew_grows_with_sigma_and_zero_sigma_is_equal(seed: int) -> None:
    labels = np.zeros(5000, dtype=np.int64)

    def spread(sigma: float) -> float:
        sizes = [len(p) for p in SizeSkewPartitioner(seed=seed, sigma=sigma).partition(labels, 20)]
        return float(np.std(sizes) / np.mean(sizes))

    # Same seed, same normal draws scaled by sigma: the size spread must grow with sigma.
    assert spread(0.0) < 0.01
    assert spread(0.5) < spread(2.0)


def test_size_skew_respects_min_size_even_with_heavy_tails() -> None:
    labels = np.zeros(500, dtype=np.int64)
    for kwargs in ({"sigma": 8.0}, {"distribution": "powerlaw", "shape": 0.05}):
        parts = SizeSkewPartitioner(seed=3, min_size=7, **kwargs).partition(labels, 30)
        assert min(len(p) for p in parts) >= 7
        assert sum(len(p) for p in parts) == 500


def test_natural_gives_one_sorted_group_per_client() -> None:
    groups = np.array(["b", "a", "b", "c", "a", "b"])
    partitioner = NaturalPartitioner(groups=groups, seed=0)
    parts = partitioner.partition(np.zeros(6, dtype=np.int64), 3)
    assert partitioner.group_names.tolist() == ["a", "b", "c"]
    assert [p.tolist() for p in parts] == [[1, 4], [0, 2, 5], [3]]
    with pytest.raises(ConfigError, match="num_clients is 2 but the data has 3 groups"):
        partitioner.partition(np.zeros(6, dtype=np.int64), 2)
    with pytest.raises(ConfigError, match="5 labels but 6 group ids"):
        partitioner.partition(np.zeros(5, dtype=np.int64), 3)


@pytest.mark.parametrize("key", sorted(COVERING))
def test_more_clients_than_samples_is_an_error(key: str) -> None:
    with pytest.raises(ConfigError, match="6 clients but only 5 samples"):
        build(key, 0).partition(np.arange(5) % 2, 6)


@pytest.mark.parametrize(
    ("labels", "num_clients", "message"),
    [
        (np.zeros((2, 3), dtype=int), 1, "labels must be 1-D"),
        (np.array([0.5, 1.0]), 1, "labels must be integers"),
        (np.array([0, -1]), 1, "labels must be >= 0"),
        (np.array([0, 1]), 0, "num_clients must be an int >= 1"),
    ],
)
def test_bad_inputs_are_rejected(labels: np.ndarray, num_clients: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        IidPartitioner(seed=0).partition(labels, num_clients)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("dirichlet", {"alpha": 0.0}, "alpha must be > 0"),
        ("dirichlet", {"alpha": -1.0}, "alpha must be > 0"),
        ("dirichlet", {"alpha": 1.0, "min_size": 0}, "min_size must be >= 1"),
        ("quality", {"high_alpha": 0.0}, "high_alpha must be > 0"),
        ("quality", {"low_alpha": float("nan")}, "low_alpha must be > 0"),
        ("quality", {"high_quality_fraction": 1.5}, r"must be in \[0, 1\]"),
        ("size_skew", {"sigma": -0.1}, "sigma must be >= 0"),
        ("size_skew", {"shape": 0.0}, "shape must be > 0"),
        ("size_skew", {"distribution": "zipf"}, "'lognormal' or 'powerlaw'"),
        ("iid", {"seed": -1}, "seed must be an int >= 0"),
    ],
)
def test_bad_options_are_config_errors(name: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        get_partitioner(name, **{"seed": 0, **options})


def test_registry_lists_names_suggests_on_typo_and_rejects_unknown_options() -> None:
    assert available_partitioners() == ["dirichlet", "iid", "natural", "quality", "size_skew"]
    with pytest.raises(UnknownNameError, match=r"did you mean 'dirichlet'.*valid names: dirichlet"):
        get_partitioner("dirichlet_", seed=0)
    with pytest.raises(ConfigError, match="'iid' has no option 'alpha'; its options: seed"):
        get_partitioner("iid", seed=0, alpha=1.0)
    with pytest.raises(ConfigError, match="'dirichlet' needs the option 'alpha'"):
        get_partitioner("dirichlet", seed=0)
    with pytest.raises(ConfigError, match="needs the option 'seed'"):
        get_partitioner("iid")
    assert partitioner_options("dirichlet")["alpha"] is True
    assert partitioner_options("dirichlet")["min_size"] is False
    assert isinstance(get_partitioner("quality", seed=1), QualityPartitioner)


# --- Flower Datasets' partitioners by name ------------------------------------------------------


def test_a_flwr_datasets_partitioner_by_name_gets_the_runs_clients_and_seed() -> None:
    labels = np.repeat(np.arange(4), 25)
    shard = get_partitioner("flwr_datasets.ShardPartitioner", seed=3, num_shards_per_partition=2)
    parts = shard.partition(labels, 5)
    assert len(parts) == 5
    assert all(np.array_equal(p, np.sort(p)) and len(p) for p in parts)
    assert len(np.unique(np.concatenate(parts))) == sum(len(p) for p in parts)  # disjoint
    assert [len(np.unique(labels[p])) for p in parts] == [2] * 5  # 2 shards of sorted labels
    again = get_partitioner("flwr_datasets.ShardPartitioner", seed=3, num_shards_per_partition=2)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again.partition(labels, 5), strict=True))
    other = get_partitioner("flwr_datasets.ShardPartitioner", seed=4, num_shards_per_partition=2)
    assert any(
        not np.array_equal(a, b) for a, b in zip(parts, other.partition(labels, 5), strict=True)
    )
    dirichlet = get_partitioner("flwr_datasets.DirichletPartitioner", seed=0, alpha=0.5)
    assert sum(len(p) for p in dirichlet.partition(labels, 4)) == 100


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("flwr_datasets.Nope", {}, "flwr_datasets has no partitioner 'Nope'; valid names: "),
        ("flwr_datasets.ShardPartitioner", {"shards": 2}, "has no option 'shards'; its options"),
        ("flwr_datasets.NaturalIdPartitioner", {}, "made 4 partitions for 5 clients"),
        ("flwr_datasets.DirichletPartitioner", {"alpha": -1.0}, "DirichletPartitioner failed"),
    ],
)
def test_flwr_datasets_mistakes_are_one_line_config_errors(
    name: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        get_partitioner(name, seed=0, **options).partition(np.repeat(np.arange(4), 25), 5)
    assert "\n" not in str(info.value)
