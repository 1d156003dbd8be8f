"""Per-round randomness derived from ``(seed, round, client)``.

Nothing random in a round depends on what ran before it, so a resumed run, a Flower run and an
in-process run draw the same client sample, batch order and dropout masks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

_SAMPLING, _BATCHES, _DROPOUT = 1, 2, 3


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (NumPy's SeedSequence hashing, stable across platforms)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


def sample_clients(seed: int, round_index: int, num_clients: int, per_round: int) -> list[int]:
    """The sorted client indices that train in ``round_index``."""
    rng = np.random.default_rng(derive_seed(seed, _SAMPLING, round_index))
    chosen = rng.choice(num_clients, size=min(per_round, num_clients), replace=False)
    return sorted(int(c) for c in chosen)


def batch_generator(seed: int, round_index: int, client: int) -> torch.Generator:
    """The generator that shuffles one client's batches in one round."""
    return torch.Generator().manual_seed(derive_seed(seed, _BATCHES, round_index, client))


@contextmanager
def client_torch_rng(seed: int, round_index: int, client: int) -> Iterator[None]:
    """Seed torch's default generator (dropout) for one client's training, then restore it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, _DROPOUT, round_index, client))
        yield
