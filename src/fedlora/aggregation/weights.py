"""Client weights of a round: data size by default, uniform as an option."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from fedlora.errors import FedloraError
from fedlora.lora.update import ClientUpdate

Weighting = Literal["num_examples", "uniform"]
WEIGHTINGS: tuple[Weighting, ...] = ("num_examples", "uniform")


def client_weights(updates: Sequence[ClientUpdate], weighting: Weighting) -> Tensor:
    """Weights ``p_k`` normalised over the round's participants (float64, summing to 1)."""
    if weighting == "uniform":
        raw = torch.ones(len(updates), dtype=torch.float64)
    elif weighting == "num_examples":
        raw = torch.tensor([float(u.num_examples) for u in updates], dtype=torch.float64)
    else:
        raise FedloraError(f"weighting {weighting!r} is not one of {', '.join(WEIGHTINGS)}")
    return raw / raw.sum()
