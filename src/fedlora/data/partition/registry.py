"""Partitioners by name: ``get_partitioner("dirichlet", alpha=0.5, seed=0)``."""

from __future__ import annotations

import difflib
import inspect

from fedlora.data.partition.base import Partitioner
from fedlora.data.partition.dirichlet import DirichletPartitioner
from fedlora.data.partition.iid import IidPartitioner
from fedlora.data.partition.natural import NaturalPartitioner
from fedlora.data.partition.quality import QualityPartitioner
from fedlora.data.partition.size_skew import SizeSkewPartitioner
from fedlora.errors import ConfigError, UnknownNameError

_REGISTRY: dict[str, type[Partitioner]] = {
    cls.name: cls
    for cls in (
        IidPartitioner,
        DirichletPartitioner,
        SizeSkewPartitioner,
        QualityPartitioner,
        NaturalPartitioner,
    )
}


def available_partitioners() -> list[str]:
    """The registered partitioner names, sorted."""
    return sorted(_REGISTRY)


def partitioner_class(name: str) -> type[Partitioner]:
    """The class registered under ``name``; a typo gets the valid names and the closest match."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        valid = ", ".join(available_partitioners())
        raise UnknownNameError(
            f"unknown partitioner {name!r}{hint}; valid names: {valid}"
        ) from None


def partitioner_options(name: str) -> dict[str, bool]:
    """The keyword options of partitioner ``name``, each mapped to whether it is required."""
    parameters = inspect.signature(partitioner_class(name).__init__).parameters
    return {
        key: p.default is inspect.Parameter.empty for key, p in parameters.items() if key != "self"
    }


def get_partitioner(name: str, **options: object) -> Partitioner:
    """Build partitioner ``name``; unknown or missing options are a :class:`ConfigError`."""
    cls = partitioner_class(name)
    valid = partitioner_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(
            f"partitioner {name!r} has no option {unknown[0]!r}; its options: {', '.join(valid)}"
        )
    missing = [key for key, required in valid.items() if required and key not in options]
    if missing:
        raise ConfigError(f"partitioner {name!r} needs option {missing[0]!r}")
    return cls(**options)  # type: ignore[arg-type]
