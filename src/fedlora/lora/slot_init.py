"""Deterministic initialisation of adapter slots that the global state does not hold.

A slot whose ``A`` row and ``B`` column are both zero never receives a gradient, so a client
that asks for more slots than the global state has gets PEFT's default initialisation for the
missing ones: ``A`` rows uniform in ``±1/sqrt(in)`` (kaiming-uniform with ``a=sqrt(5)``) and
``B`` columns zero, which leaves the update unchanged.  Row ``j`` of a module depends only on
``(seed, round, module, j)``, so every client receives the same fresh slots in a round.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fedlora.seeds import derive_seed, name_part


def slot_seed(seed: int, round_index: int, module: str) -> int:
    """The seed of one module's fresh slots in one round (:mod:`fedlora.seeds`, ``"slots"``)."""
    return derive_seed(seed, "slots", round_index, name_part(module))


def fresh_lora_A(
    module: str, in_features: int, rows: int, *, seed: int, round_index: int, dtype: torch.dtype
) -> Tensor:
    """The first ``rows`` rows of the fresh ``A`` of ``module``; callers slice what they lack."""
    generator = torch.Generator().manual_seed(slot_seed(seed, round_index, module))
    bound = 1.0 / math.sqrt(in_features)
    values = torch.rand(rows, in_features, generator=generator, dtype=torch.float64)
    return ((values * 2.0 - 1.0) * bound).to(dtype)
