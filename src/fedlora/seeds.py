"""Every random stream of a run, derived from the run's one seed and a named purpose.

One ``run.seed`` feeds many unrelated draws: the data subsample, the partition, the rank
allocation, the held-out rows, client sampling, batch order, dropout, fresh LoRA slots, model
initialisation.  Each stream is seeded by ``numpy.random.SeedSequence([seed, purpose, *parts])``
with a fixed id per purpose (:data:`PURPOSES`), so the draws are independent, changing how one
stream is used moves no other, and every stream is the same on every platform and process.
"""

from __future__ import annotations

import zlib

import numpy as np

PURPOSES: dict[str, int] = {
    "sampling": 1,  # which clients train in a round
    "batches": 2,  # a client's batch order in a round
    "dropout": 3,  # a client's dropout masks in a round
    "train_subsample": 4,  # data.max_train_samples
    "test_subsample": 5,  # data.max_test_samples
    "test_split": 6,  # carving a test split out of a dataset that has none
    "partition": 7,  # the partitioner
    "ranks": 8,  # the rank policy (allocation, tie breaks)
    "score_rows": 9,  # the server's validation rows of the loss-based policy
    "held_out": 10,  # each client's own held-out rows (score_on = "local")
    "slots": 11,  # fresh LoRA slots served beyond the global rank
    "model_init": 12,  # a new classification head and a new adapter's first values
    "tasks": 13,  # the generated instruction tasks and the unseen ones
    "synthetic": 14,  # the synthetic classification dataset
    "seen_test": 15,  # seen-task examples held out (instruct.seen_test_fraction), their subsample
}


def derive_seed(seed: int, purpose: str, *parts: int) -> int:
    """A 63-bit seed for one purpose (and e.g. round and client) of the run seeded ``seed``."""
    entropy = [int(seed), PURPOSES[purpose], *(int(p) for p in parts)]
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


def rng(seed: int, purpose: str, *parts: int) -> np.random.Generator:
    """A NumPy generator for one purpose of the run seeded ``seed``."""
    return np.random.default_rng(derive_seed(seed, purpose, *parts))


def name_part(name: str) -> int:
    """A stable integer for a name (e.g. a module), independent of Python's hash salt."""
    return zlib.crc32(name.encode("utf-8"))
