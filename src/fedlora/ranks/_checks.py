"""Validation of policy options, so every policy reports bad input with the same one-line errors."""

from __future__ import annotations

import math

from fedlora.errors import ConfigError


def check_rank(value: object, option: str) -> int:
    """A LoRA rank: a positive int (bools are refused: ``True`` is not a rank)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{option} must be a positive integer rank, got {value!r}")
    if value < 1:
        raise ConfigError(f"{option} must be a positive integer rank, got {value}")
    return value


def check_fraction(value: object, option: str) -> float:
    """A fraction of clients in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{option} must be a number in [0, 1], got {value!r}")
    fraction = float(value)
    if not 0.0 <= fraction <= 1.0:  # also refuses NaN
        raise ConfigError(f"{option} must be a number in [0, 1], got {value!r}")
    return fraction


def check_seed(value: object, option: str = "seed") -> int:
    """A seed for ``numpy.random.default_rng``: a non-negative int, never None (reproducibility)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{option} must be a non-negative integer, got {value!r}")
    return value


def check_num_clients(value: object) -> int:
    """The number of clients an allocation is made for."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"num_clients must be a positive integer, got {value!r}")
    return value


def count_for_fraction(fraction: float, num_clients: int) -> int:
    """``fraction * num_clients`` rounded half up (not Python's half-to-even ``round``).

    Half up makes 5 % of 10 clients one client, not zero; the small tolerance keeps products such
    as ``0.15 * 10 = 1.4999999999999998`` on the side a person would expect.
    """
    return min(num_clients, math.floor(fraction * num_clients + 0.5 + 1e-9))
