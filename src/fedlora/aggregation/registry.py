"""Aggregators by name: ``get_aggregator("flexlora", svd="factored")``."""

from __future__ import annotations

import difflib
import inspect

from fedlora.aggregation.base import Aggregator
from fedlora.aggregation.fedit import FedIT
from fedlora.aggregation.ffa import FFA
from fedlora.aggregation.flexlora import FlexLoRA
from fedlora.aggregation.flora import FLoRA
from fedlora.aggregation.hetlora import HetLoRA
from fedlora.aggregation.replication import Replication
from fedlora.aggregation.zero_padding import ZeroPadding
from fedlora.errors import FedloraError, UnknownNameError

_REGISTRY: dict[str, type[Aggregator]] = {
    cls.name: cls for cls in (FedIT, ZeroPadding, HetLoRA, Replication, FlexLoRA, FLoRA, FFA)
}


def available_aggregators() -> list[str]:
    """The registered aggregator names, sorted."""
    return sorted(_REGISTRY)


def aggregator_class(name: str) -> type[Aggregator]:
    """The class registered under ``name``; a typo gets the valid names and the closest match."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownNameError(
            f"unknown aggregator {name!r}{hint}; valid names: {', '.join(available_aggregators())}"
        ) from None


def aggregator_options(name: str) -> list[str]:
    """The keyword options the aggregator ``name`` accepts."""
    signature = inspect.signature(aggregator_class(name).__init__)
    return [p for p in signature.parameters if p != "self"]


def get_aggregator(name: str, **options: object) -> Aggregator:
    """Build the aggregator ``name`` with ``options``; unknown options are a one-line error."""
    cls = aggregator_class(name)
    valid = aggregator_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise FedloraError(
            f"aggregator {name!r} has no option {unknown[0]!r}; its options: {', '.join(valid)}"
        )
    return cls(**options)  # type: ignore[arg-type]
