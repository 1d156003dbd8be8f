"""The records of fedlora's Flower messages: their names, and typed reads of their settings.

Kept apart from :mod:`fedlora.flower.records` (which needs torch) so that the ClientApp's query
handler answers without importing torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedlora.errors import FedloraError

ARRAYS = "arrays"  # ArrayRecord: LoRA factors and dense tensors (served, or a client's update)
CONFIG = "config"  # ConfigRecord: a node's identity, or the settings of a train message
METRICS = "metrics"  # MetricRecord: a client's train loss, steps, seconds, example count
MERGED = "merged"  # ArrayRecord: the merged rounds (FLoRA) a node lacks


def integer(record: Mapping[str, Any], key: str, where: str = "node config") -> int:
    """``record[key]`` as an int, or an error naming the key and where it came from."""
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FedloraError(f"{where} {key!r} must be an integer, got {value!r}")
    return value


def boolean(record: Mapping[str, Any], key: str, where: str) -> bool:
    """``record[key]`` as a bool (the string "False" is not one), or an error naming the key."""
    value = record.get(key)
    if not isinstance(value, bool):
        raise FedloraError(f"{where} {key!r} must be true or false, got {value!r}")
    return value
