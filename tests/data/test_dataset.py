"""TextClassificationData: validation on construction and stable class ids in subsets."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedlora.data import TextClassificationData
from fedlora.errors import ConfigError


def make(labels: list[int], names: tuple[str, ...] = ("a", "b", "c")) -> TextClassificationData:
    texts = [f"text {i}" for i in range(len(labels))]
    return TextClassificationData(texts, np.asarray(labels), list(names), "toy")


def test_labels_are_stored_as_int64_and_classes_counted_from_names() -> None:
    data = make([0, 2, 2], names=("a", "b", "c", "d"))
    assert data.labels.dtype == np.int64
    assert len(data) == 3
    assert data.num_classes == 4


def test_subset_keeps_order_and_every_class_name() -> None:
    data = make([0, 1, 2, 1])
    sub = data.subset(np.array([3, 0]))
    assert sub.texts == ["text 3", "text 0"]
    assert sub.labels.tolist() == [1, 0]
    assert sub.label_names == data.label_names
    assert sub.num_classes == 3


def test_dataset_is_frozen() -> None:
    data = make([0])
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("labels", "names", "message"),
    [
        ([0, 3], ("a", "b", "c"), "label 3 is outside"),
        ([0, -1], ("a", "b"), "label -1 is outside"),
        ([0], (), "label_names is empty"),
    ],
)
def test_bad_labels_are_rejected(labels: list[int], names: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make(labels, names)


def test_mismatched_lengths_and_float_labels_are_rejected() -> None:
    with pytest.raises(ConfigError, match="2 texts but 1 labels"):
        TextClassificationData(["x", "y"], np.array([0]), ["a"], "toy")
    with pytest.raises(ConfigError, match="must be integers"):
        TextClassificationData(["x"], np.array([0.5]), ["a"], "toy")


def test_subset_index_out_of_range_is_rejected() -> None:
    with pytest.raises(ConfigError, match="out of range"):
        make([0, 1]).subset([2])


def test_equality_compares_contents() -> None:
    assert make([0, 1]) == make([0, 1])
    assert make([0, 1]) != make([1, 1])
    assert make([0, 1]) != make([0, 1], names=("a", "b", "z"))
