"""Rows held out of every client: a common validation set the server scores clients on.

A loss-based rank policy compares clients by the loss of their trained adapters; that compares
data quality only when every client is scored on the same data.  The rows come out of the
clients' partitions (so no client trains on them), balanced over the labels (or tasks), and no
client is left without rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from fedlora.errors import ConfigError

IndexArray = npt.NDArray[np.int64]


def hold_out_balanced(
    groups: npt.NDArray[np.int64],
    partitions: Sequence[IndexArray],
    count: int,
    rng: np.random.Generator,
) -> tuple[IndexArray, list[IndexArray]]:
    """``(held rows, partitions without them)``: ``count`` rows, as equal per group as possible.

    Groups are visited in turn, each giving one of its remaining rows (in a random order) until
    ``count`` rows are held; a row whose client would be left empty is skipped.
    """
    owner = np.full(len(groups), -1, dtype=np.int64)
    for client, rows in enumerate(partitions):
        owner[rows] = client
    sizes = np.array([len(p) for p in partitions], dtype=np.int64)
    assigned = np.flatnonzero(owner >= 0)
    spare = len(assigned) - len(partitions)
    if count > spare:
        raise ConfigError(
            f"score_rows: {count} rows cannot be held out of {len(assigned)} training rows that "
            f"{len(partitions)} clients share (each keeps at least one); hold out at most {spare}"
        )
    queues = [
        list(rng.permutation(assigned[groups[assigned] == g])) for g in np.unique(groups[assigned])
    ]
    held: list[int] = []
    while len(held) < count and any(queues):
        for queue in queues:
            while queue and len(held) < count:
                row = int(queue.pop())
                if sizes[owner[row]] > 1:
                    sizes[owner[row]] -= 1
                    held.append(row)
                    break
    kept = np.ones(len(groups), dtype=bool)
    kept[held] = False
    remaining = [np.asarray(p[kept[p]], dtype=np.int64) for p in partitions]
    return np.sort(np.asarray(held, dtype=np.int64)), remaining


def split_own_rows(
    partitions: Sequence[IndexArray], share: float, rng: np.random.Generator
) -> tuple[list[IndexArray], list[IndexArray]]:
    """``(training rows, held-out rows)`` per client: a ``share`` of each client's own rows.

    A client with one row keeps it for training and holds out nothing.
    """
    train, held_out = [], []
    for part in partitions:
        shuffled = rng.permutation(part)
        held = max(1, round(share * len(part))) if len(part) > 1 else 0
        held_out.append(np.sort(shuffled[:held]).astype(np.int64))
        train.append(np.sort(shuffled[held:]).astype(np.int64))
    return train, held_out
