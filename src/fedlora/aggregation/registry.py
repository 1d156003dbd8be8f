"""Aggregators by name: ``get_aggregator("flexlora", svd="factored")``."""

from __future__ import annotations

from typing import Any

from fedlora.aggregation.base import Aggregator
from fedlora.aggregation.fedit import FedIT
from fedlora.aggregation.ffa import FFA
from fedlora.aggregation.flexlora import FlexLoRA
from fedlora.aggregation.flora import FLoRA
from fedlora.aggregation.hetlora import HetLoRA
from fedlora.aggregation.norm_replication import NormReplication
from fedlora.aggregation.replication import Replication
from fedlora.aggregation.zero_padding import ZeroPadding
from fedlora.registry import Registry

_AGGREGATORS: Registry[Aggregator] = Registry(
    "aggregator",
    (FedIT, ZeroPadding, HetLoRA, Replication, NormReplication, FlexLoRA, FLoRA, FFA),
)


def available_aggregators() -> list[str]:
    """The registered aggregator names, sorted."""
    return _AGGREGATORS.names()


def aggregator_class(name: str) -> type[Aggregator]:
    """The class registered under ``name``; a typo gets the valid names and the closest match."""
    return _AGGREGATORS.get_class(name)


def aggregator_options(name: str) -> list[str]:
    """The keyword options the aggregator ``name`` accepts."""
    return list(_AGGREGATORS.options(name))


def get_aggregator(name: str, **options: Any) -> Aggregator:
    """Build the aggregator ``name`` with ``options``; unknown options are a one-line error."""
    return _AGGREGATORS.build(name, **options)
