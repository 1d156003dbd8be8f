"""Text-classification data for federated runs: loading, partitioning, summaries, tokenisation."""

from fedlora.data.dataset import TextClassificationData
from fedlora.data.loaders import (
    DATA_ENV,
    available_datasets,
    load_csv,
    load_jsonl,
    load_named_dataset,
    stratified_split,
    synthetic_classification,
)
from fedlora.data.partition import (
    DirichletPartitioner,
    IidPartitioner,
    NaturalPartitioner,
    Partitioner,
    QualityPartition,
    QualityPartitioner,
    SizeSkewPartitioner,
    available_partitioners,
    get_partitioner,
    partitioner_class,
    partitioner_options,
)
from fedlora.data.summary import label_distribution, write_label_distribution
from fedlora.data.tokenized import TokenizedData

__all__ = [
    "DATA_ENV",
    "DirichletPartitioner",
    "IidPartitioner",
    "NaturalPartitioner",
    "Partitioner",
    "QualityPartition",
    "QualityPartitioner",
    "SizeSkewPartitioner",
    "TextClassificationData",
    "TokenizedData",
    "available_datasets",
    "available_partitioners",
    "get_partitioner",
    "label_distribution",
    "load_csv",
    "load_jsonl",
    "load_named_dataset",
    "partitioner_class",
    "partitioner_options",
    "stratified_split",
    "synthetic_classification",
    "write_label_distribution",
]
