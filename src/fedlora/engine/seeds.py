"""Per-round randomness derived from ``(seed, round, client)`` (see :mod:`fedlora.seeds`).

Nothing random in a round depends on what ran before it, so a resumed run, a Flower run and an
in-process run draw the same client sample, batch order and dropout masks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from fedlora.model.device import fork_rng
from fedlora.seeds import derive_seed, rng


def sample_clients(seed: int, round_index: int, num_clients: int, per_round: int) -> list[int]:
    """The sorted client indices that train in ``round_index``."""
    chosen = rng(seed, "sampling", round_index).choice(
        num_clients, size=min(per_round, num_clients), replace=False
    )
    return sorted(int(c) for c in chosen)


def batch_generator(seed: int, round_index: int, client: int) -> torch.Generator:
    """The generator that shuffles one client's batches in one round."""
    return torch.Generator().manual_seed(derive_seed(seed, "batches", round_index, client))


@contextmanager
def client_torch_rng(
    seed: int, round_index: int, client: int, device: torch.device | None = None
) -> Iterator[None]:
    """Seed torch's default generators (dropout) for one client's training, then restore them.

    On a GPU ``device`` the dropout masks are drawn by that GPU's generator, seeded the same way
    (so a run is reproducible on one device, but its masks differ from the CPU's).
    """
    with fork_rng(device or torch.device("cpu")):
        torch.manual_seed(derive_seed(seed, "dropout", round_index, client))
        yield
