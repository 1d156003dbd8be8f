"""Flower Datasets' partitioners behind fedlora's partitioner contract (labels in, indices out).

``data.partition = "flwr_datasets.ShardPartitioner"`` (any partitioner class of
``flwr_datasets.partitioner`` by name) partitions the run's rows with Flower's own code, so a
Flower user gets the splits they know (shards, pathological, linear / square / exponential
sizes, inner Dirichlet, natural ids).  The run fills in what it knows: ``num_partitions`` (the
clients), ``partition_by`` (the label column, or the task for causal LMs) and ``seed`` (the
run's partition stream); everything else comes from ``data.partition_options``.

Rows are handed over in file order, as ``FederatedDataset`` would: note that Flower's
``IidPartitioner`` cuts contiguous shards without shuffling, so on a file sorted by class it is
not IID; fedlora's own ``iid`` shuffles.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import numpy as np
import numpy.typing as npt

from fedlora.data.partition.base import IndexArray, Partitioner
from fedlora.errors import ConfigError

PREFIX = "flwr_datasets."
_FILLED = ("num_partitions", "partition_by", "seed")


def flower_partitioner_names() -> list[str]:
    """The partitioner classes of ``flwr_datasets.partitioner`` that split rows (not columns)."""
    module: Any = importlib.import_module("flwr_datasets.partitioner")
    return sorted(
        name
        for name in module.__all__
        if name != "Partitioner"
        and not name.startswith("Vertical")
        and name.endswith("Partitioner")
    )


class FlowerDatasetsPartitioner(Partitioner):
    """One ``flwr_datasets`` partitioner class, run on the labels; see the module docstring."""

    name = "flwr_datasets"

    def __init__(self, *, class_name: str, seed: int, **options: Any) -> None:
        super().__init__(seed=seed)
        valid = flower_partitioner_names()
        if class_name not in valid:
            raise ConfigError(
                f"data.partition: flwr_datasets has no partitioner {class_name!r}; valid names: "
                f"{', '.join(PREFIX + name for name in valid)}"
            )
        module: Any = importlib.import_module("flwr_datasets.partitioner")
        self.flower_class: Any = getattr(module, class_name)
        self.label = f"{PREFIX}{class_name}"
        parameters = inspect.signature(self.flower_class.__init__).parameters
        self.accepted = [key for key in parameters if key != "self"]
        unknown = sorted(set(options) - set(self.accepted))
        if unknown:
            raise ConfigError(
                f"data.partition_options: {self.label} has no option {unknown[0]!r}; its "
                f"options: {', '.join(self.accepted)}"
            )
        self.options = dict(options)

    def partition(self, labels: npt.ArrayLike, num_clients: int) -> list[IndexArray]:
        array = self._check(labels, num_clients)
        import datasets  # heavy; only a Flower partitioner needs it

        filled = {"num_partitions": num_clients, "partition_by": "label", "seed": self.seed}
        kwargs = {k: v for k, v in filled.items() if k in self.accepted} | self.options
        try:
            flower = self.flower_class(**kwargs)
            flower.dataset = datasets.Dataset.from_dict(
                {"label": array.tolist(), "row": list(range(len(array)))}
            )
            count = int(flower.num_partitions)
            if count != num_clients:
                raise ConfigError(
                    f"data.partition: {self.label} made {count} partitions for "
                    f"{num_clients} clients (run.num_clients)"
                )
            parts = [
                np.sort(np.asarray(flower.load_partition(i)["row"], dtype=np.int64))
                for i in range(count)
            ]
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            if isinstance(exc, ConfigError):
                raise
            message = " ".join(str(exc).split())
            raise ConfigError(f"data.partition_options: {self.label} failed: {message}") from None
        for client, part in enumerate(parts):
            if not len(part):
                raise ConfigError(f"data.partition: {self.label} gave client {client} no rows")
        return parts
