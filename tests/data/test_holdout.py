"""Rows held out of every client: balanced over groups, out of every partition, none left empty."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedlora.data.holdout import hold_out_balanced, split_own_rows
from fedlora.errors import ConfigError


@given(
    labels=st.lists(st.integers(0, 4), min_size=12, max_size=200),
    num_clients=st.integers(1, 10),
    share=st.floats(0.05, 0.6),
    seed=st.integers(0, 2**32 - 1),
)
def test_held_rows_leave_every_partition_and_are_balanced(
    labels: list[int], num_clients: int, share: float, seed: int
) -> None:
    groups = np.asarray(labels, dtype=np.int64)
    parts = np.array_split(np.random.default_rng(seed).permutation(len(groups)), num_clients)
    partitions = [np.sort(p).astype(np.int64) for p in parts if len(p)]
    count = max(1, int(share * (len(groups) - len(partitions))))
    held, remaining = hold_out_balanced(groups, partitions, count, np.random.default_rng(seed))
    assert len(held) == count == len(set(held.tolist()))
    kept = np.concatenate(remaining)
    assert not set(held.tolist()) & set(kept.tolist())
    assert sorted([*held.tolist(), *kept.tolist()]) == sorted(np.concatenate(partitions).tolist())
    assert all(len(r) >= 1 for r in remaining)
    assert all(
        set(r.tolist()) <= set(p.tolist()) for r, p in zip(remaining, partitions, strict=True)
    )
    # Balanced: a group gives fewer rows than another only when it had no more rows to give.
    taken = np.bincount(groups[held], minlength=5)
    available = np.bincount(groups, minlength=5)
    for g in range(5):
        if taken[g] < taken.max() - 1:
            assert taken[g] == available[g] or _pinned(g, groups, partitions, held)


def _pinned(group: int, groups: np.ndarray, partitions: list[np.ndarray], held: np.ndarray) -> bool:
    """Whether every row of ``group`` not held is the last row of its client."""
    held_set = set(held.tolist())
    for part in partitions:
        left = [r for r in part.tolist() if r not in held_set]
        if any(groups[r] == group for r in left) and len(left) > 1:
            return False
    return True


def test_too_many_held_rows_is_one_line() -> None:
    groups = np.zeros(6, dtype=np.int64)
    partitions = [np.arange(3, dtype=np.int64), np.arange(3, 6, dtype=np.int64)]
    with pytest.raises(ConfigError, match=r"5 rows cannot be held out of 6 .* at most 4"):
        hold_out_balanced(groups, partitions, 5, np.random.default_rng(0))


def test_own_rows_hold_out_a_share_of_each_client() -> None:
    partitions = [np.arange(10, dtype=np.int64), np.arange(10, 11, dtype=np.int64)]
    train, held = split_own_rows(partitions, 0.2, np.random.default_rng(0))
    assert [len(t) for t in train] == [8, 1] and [len(h) for h in held] == [2, 0]
    assert sorted([*train[0].tolist(), *held[0].tolist()]) == list(range(10))
