"""Task partition (one task per client, unseen tasks held out) and per-task train/test splits."""

from __future__ import annotations

import numpy as np
import pytest

from fedlora.errors import ConfigError
from fedlora.instruct import (
    InstructionData,
    InstructionExample,
    generate_tasks,
    task_partition,
    train_test_split_per_task,
)


@pytest.fixture(scope="module")
def data() -> InstructionData:
    return generate_tasks(num_tasks=20, examples_per_task=(3, 9), seed=2)


def tasks_of(data: InstructionData, idx: np.ndarray) -> set[str]:
    return {data.examples[int(i)].task for i in idx}


def test_one_task_per_client_and_unseen_tasks_in_no_client(data: InstructionData) -> None:
    clients, unseen = task_partition(data, num_clients=15, unseen_fraction=0.25, seed=0)
    assert len(unseen) == 5
    assert len(clients) == 15
    per_client = [tasks_of(data, idx) for idx in clients]
    assert all(len(t) == 1 for t in per_client)
    seen = set().union(*per_client)
    assert len(seen) == 15
    assert seen.isdisjoint(unseen)
    assert seen | set(unseen) == set(data.tasks())
    # each client holds all of its task's examples, and nothing else
    groups = data.by_task()
    for idx, tasks in zip(clients, per_client, strict=True):
        assert idx.tolist() == groups[tasks.pop()].tolist()


def test_more_tasks_than_clients_gives_several_per_client(data: InstructionData) -> None:
    clients, unseen = task_partition(data, num_clients=4, unseen_fraction=0.2, seed=1)
    counts = sorted(len(tasks_of(data, idx)) for idx in clients)
    assert counts == [4, 4, 4, 4]
    all_idx = np.concatenate(clients)
    assert len(np.unique(all_idx)) == len(all_idx)
    unseen_idx = np.concatenate([data.by_task()[t] for t in unseen])
    assert len(all_idx) + len(unseen_idx) == len(data)
    assert np.intersect1d(all_idx, unseen_idx).size == 0


def test_partition_is_seeded(data: InstructionData) -> None:
    a = task_partition(data, num_clients=10, unseen_fraction=0.3, seed=7)
    b = task_partition(data, num_clients=10, unseen_fraction=0.3, seed=7)
    c = task_partition(data, num_clients=10, unseen_fraction=0.3, seed=8)
    assert a[1] == b[1]
    assert all(np.array_equal(x, y) for x, y in zip(a[0], b[0], strict=True))
    assert a[1] != c[1] or any(not np.array_equal(x, y) for x, y in zip(a[0], c[0], strict=True))


def test_small_positive_fraction_holds_out_at_least_one(data: InstructionData) -> None:
    _, unseen = task_partition(data, num_clients=5, unseen_fraction=0.01, seed=0)
    assert len(unseen) == 1
    _, none = task_partition(data, num_clients=5, unseen_fraction=0.0, seed=0)
    assert none == []


@pytest.mark.parametrize(
    ("clients", "fraction", "match"),
    [(16, 0.25, "each client needs a task"), (0, 0.1, "num_clients"), (3, 1.0, "unseen")],
)
def test_partition_errors(data: InstructionData, clients: int, fraction: float, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        task_partition(data, num_clients=clients, unseen_fraction=fraction, seed=0)


def test_train_test_split_per_task(data: InstructionData) -> None:
    train, test = train_test_split_per_task(data, 0.25, seed=0)
    assert np.intersect1d(train, test).size == 0
    assert sorted([*train.tolist(), *test.tolist()]) == list(range(len(data)))
    for task, idx in data.by_task().items():
        n_test = np.isin(idx, test).sum()
        assert n_test == min(max(round(0.25 * len(idx)), 1), len(idx) - 1), task
    again = train_test_split_per_task(data, 0.25, seed=0)
    assert np.array_equal(again[1], test)


def test_single_example_task_stays_in_train() -> None:
    data = InstructionData([InstructionExample("i", "x", "y", "solo")], "d")
    train, test = train_test_split_per_task(data, 0.5, seed=0)
    assert train.tolist() == [0]
    assert test.tolist() == []
    with pytest.raises(ConfigError, match="test_fraction"):
        train_test_split_per_task(data, 1.0, seed=0)
