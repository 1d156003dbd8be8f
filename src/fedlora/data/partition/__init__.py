"""Splitting a dataset among federated clients: IID, label skew, size skew, quality, natural,
and Flower Datasets' partitioners by name."""

from fedlora.data.partition.base import IndexArray, Partitioner
from fedlora.data.partition.dirichlet import DirichletPartitioner
from fedlora.data.partition.flower import FlowerDatasetsPartitioner, flower_partitioner_names
from fedlora.data.partition.iid import IidPartitioner
from fedlora.data.partition.natural import NaturalPartitioner
from fedlora.data.partition.quality import QualityPartition, QualityPartitioner
from fedlora.data.partition.registry import (
    available_partitioners,
    get_partitioner,
    partitioner_class,
    partitioner_options,
)
from fedlora.data.partition.size_skew import SizeSkewPartitioner

__all__ = [
    "DirichletPartitioner",
    "FlowerDatasetsPartitioner",
    "IidPartitioner",
    "IndexArray",
    "NaturalPartitioner",
    "Partitioner",
    "QualityPartition",
    "QualityPartitioner",
    "SizeSkewPartitioner",
    "available_partitioners",
    "flower_partitioner_names",
    "get_partitioner",
    "partitioner_class",
    "partitioner_options",
]
