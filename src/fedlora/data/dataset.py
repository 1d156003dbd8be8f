"""The in-memory text-classification dataset every loader returns and every partitioner indexes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fedlora.errors import ConfigError

LabelArray = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class TextClassificationData:
    """Texts with 0-based integer labels that index ``label_names``.

    Validated on construction so that partitioners, summaries and tokenisation can trust the
    shapes: one label per text, every label in ``[0, num_classes)``.  ``notes`` say how the labels
    were read where that is worth a line in the run's summary (e.g. ids counted from 1); they
    do not take part in equality.
    """

    texts: list[str]
    labels: LabelArray
    label_names: list[str]
    name: str
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if labels.ndim != 1:
            raise ConfigError(
                f"dataset {self.name!r}: labels must be 1-D, got shape {labels.shape}"
            )
        if len(labels) and not np.issubdtype(labels.dtype, np.integer):
            raise ConfigError(f"dataset {self.name!r}: labels must be integers, got {labels.dtype}")
        if len(labels) != len(self.texts):
            raise ConfigError(
                f"dataset {self.name!r}: {len(self.texts)} texts but {len(labels)} labels"
            )
        if not self.label_names:
            raise ConfigError(f"dataset {self.name!r}: label_names is empty")
        labels = labels.astype(np.int64, copy=False)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.label_names)):
            bad = int(labels[(labels < 0) | (labels >= len(self.label_names))][0])
            raise ConfigError(
                f"dataset {self.name!r}: label {bad} is outside [0, {len(self.label_names)})"
            )
        object.__setattr__(self, "labels", labels)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TextClassificationData):
            return NotImplemented
        return (
            self.name == other.name
            and self.label_names == other.label_names
            and self.texts == other.texts
            and np.array_equal(self.labels, other.labels)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable lists inside: not hashable

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_classes(self) -> int:
        """The number of classes, including classes with no rows here (e.g. in a subset)."""
        return len(self.label_names)

    def subset(self, indices: Sequence[int] | npt.NDArray[np.integer]) -> TextClassificationData:
        """The rows at ``indices`` in that order, keeping all class names so ids stay stable."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise ConfigError(
                f"dataset {self.name!r}: subset index out of range for {len(self)} rows"
            )
        return TextClassificationData(
            texts=[self.texts[i] for i in idx.tolist()],
            labels=self.labels[idx],
            label_names=list(self.label_names),
            name=self.name,
            notes=self.notes,
        )

    def class_counts(self) -> list[int]:
        """Rows per class, every class included (zeros too)."""
        return [int(c) for c in np.bincount(self.labels, minlength=self.num_classes)]
