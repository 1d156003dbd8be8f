"""Task-based splits: one task per client, some tasks held out unseen, per-task test sets."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fedlora.errors import ConfigError
from fedlora.instruct.examples import InstructionData

IndexArray = npt.NDArray[np.int64]


def task_partition(
    data: InstructionData, *, num_clients: int, unseen_fraction: float, seed: int
) -> tuple[list[IndexArray], list[str]]:
    """The FlexLoRA "natural" partition: ``(client index arrays, unseen task names)``.

    ``round(unseen_fraction * num_tasks)`` tasks (at least one when the fraction is positive) are
    held out and appear in no client's data.  The remaining tasks are shuffled with ``seed`` and
    dealt to clients in contiguous groups: one task per client when the counts match, several per
    client when there are more tasks than clients.  Fewer seen tasks than clients is an error.
    """
    if num_clients < 1:
        raise ConfigError(f"task_partition: num_clients must be >= 1, got {num_clients}")
    if not 0.0 <= unseen_fraction < 1.0:
        raise ConfigError(
            f"task_partition: unseen_fraction must be in [0, 1), got {unseen_fraction}"
        )
    groups = data.by_task()
    tasks = list(groups)
    num_unseen = unseen_count(len(tasks), unseen_fraction)
    num_seen = len(tasks) - num_unseen
    if num_seen < num_clients:
        raise ConfigError(
            f"task_partition: dataset {data.name!r} has {len(tasks)} tasks, {num_unseen} held out "
            f"unseen, leaving {num_seen} for {num_clients} clients; each client needs a task"
        )
    rng = np.random.default_rng(seed)
    shuffled = [tasks[int(i)] for i in rng.permutation(len(tasks))]
    unseen = set(shuffled[:num_unseen])
    seen = shuffled[num_unseen:]
    clients = []
    for chunk in np.array_split(np.arange(num_seen), num_clients):
        idx = np.concatenate([groups[seen[int(j)]] for j in chunk])
        clients.append(np.sort(idx).astype(np.int64))
    return clients, [t for t in tasks if t in unseen]


def unseen_count(num_tasks: int, unseen_fraction: float) -> int:
    """How many of ``num_tasks`` :func:`task_partition` holds out: the rounded share, at least
    one when the share is positive."""
    count = round(unseen_fraction * num_tasks)
    return max(count, 1) if unseen_fraction > 0 else count


def tasks_needed(num_clients: int, unseen_fraction: float) -> int:
    """The fewest tasks that leave one seen task per client once the unseen ones are held out."""
    total = num_clients
    while total - unseen_count(total, unseen_fraction) < num_clients:
        total += 1
    return total


def train_test_split_per_task(
    data: InstructionData, test_fraction: float, seed: int
) -> tuple[IndexArray, IndexArray]:
    """``(train, test)`` indices with ``round(test_fraction * n)`` test examples from every task.

    A task with at least two examples keeps at least one on each side; a single-example task
    stays in train.  Both arrays are sorted.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(
            f"train_test_split_per_task: test_fraction must be in (0, 1), got {test_fraction}"
        )
    rng = np.random.default_rng(seed)
    train: list[IndexArray] = []
    test: list[IndexArray] = []
    for idx in data.by_task().values():
        n = len(idx)
        n_test = min(max(round(test_fraction * n), 1), n - 1) if n >= 2 else 0
        perm = idx[rng.permutation(n)]
        test.append(perm[:n_test])
        train.append(perm[n_test:])
    empty = np.zeros(0, dtype=np.int64)
    return (
        np.sort(np.concatenate([empty, *train])).astype(np.int64),
        np.sort(np.concatenate([empty, *test])).astype(np.int64),
    )
