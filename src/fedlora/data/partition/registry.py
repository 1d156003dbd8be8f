"""Partitioners by name: ``get_partitioner("dirichlet", alpha=0.5, seed=0)``."""

from __future__ import annotations

from typing import Any

from fedlora.data.partition.base import Partitioner
from fedlora.data.partition.dirichlet import DirichletPartitioner
from fedlora.data.partition.flower import PREFIX, FlowerDatasetsPartitioner
from fedlora.data.partition.iid import IidPartitioner
from fedlora.data.partition.natural import NaturalPartitioner
from fedlora.data.partition.quality import QualityPartitioner
from fedlora.data.partition.size_skew import SizeSkewPartitioner
from fedlora.registry import Registry

_PARTITIONERS: Registry[Partitioner] = Registry(
    "partitioner",
    (
        IidPartitioner,
        DirichletPartitioner,
        SizeSkewPartitioner,
        QualityPartitioner,
        NaturalPartitioner,
    ),
)


def available_partitioners() -> list[str]:
    """The registered partitioner names, sorted."""
    return _PARTITIONERS.names()


def partitioner_class(name: str) -> type[Partitioner]:
    """The class registered under ``name``; a typo gets the valid names and the closest match."""
    return _PARTITIONERS.get_class(name)


def partitioner_options(name: str) -> dict[str, bool]:
    """The keyword options of partitioner ``name``, each mapped to whether it is required."""
    return _PARTITIONERS.options(name)


def get_partitioner(name: str, **options: Any) -> Partitioner:
    """Build partitioner ``name``; unknown or missing options are a :class:`ConfigError`.

    ``flwr_datasets.<Class>`` names a partitioner of Flower Datasets (see
    :class:`~fedlora.data.partition.flower.FlowerDatasetsPartitioner`).
    """
    if isinstance(name, str) and name.startswith(PREFIX):
        return FlowerDatasetsPartitioner(class_name=name.removeprefix(PREFIX), **options)
    return _PARTITIONERS.build(name, **options)
