"""The real AG News and DBpedia-14 subsets (README format) load, split and partition as expected.

Located through ``$FEDLORA_DATA`` or ``<repo>/../shared/data``; skipped when neither exists.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedlora.data import (
    QualityPartitioner,
    get_partitioner,
    label_distribution,
    load_named_dataset,
    write_label_distribution,
)


def test_ag_news_train_and_test_are_balanced_with_named_classes(data_dir: Path) -> None:
    train, test = load_named_dataset("ag_news", data_dir=data_dir)
    assert train.label_names == ["World", "Sports", "Business", "Sci/Tech"]
    assert test.label_names == train.label_names
    assert np.bincount(train.labels).tolist() == [1000] * 4
    assert np.bincount(test.labels).tolist() == [1000] * 4
    assert all(text.strip() for text in train.texts)
    assert test.texts[0] == test.texts[0].lower()  # README: the test file is lower-cased


def test_dbpedia_is_split_stratified_and_by_seed(data_dir: Path) -> None:
    train, test = load_named_dataset("dbpedia_14", data_dir=data_dir, seed=0)
    assert (len(train), len(test)) == (12_000, 2_000)
    assert train.num_classes == test.num_classes == 14
    per_class = np.bincount(test.labels, minlength=14)
    assert per_class.min() >= 142
    assert per_class.max() <= 143
    assert np.array_equal(np.bincount(train.labels) + per_class, np.full(14, 1000))
    _, again = load_named_dataset("dbpedia_14", data_dir=data_dir, seed=0)
    _, other = load_named_dataset("dbpedia_14", data_dir=data_dir, seed=1)
    assert again.texts == test.texts
    assert other.texts != test.texts
    _, small = load_named_dataset("dbpedia_14", data_dir=data_dir, test_size=700)
    assert np.bincount(small.labels).tolist() == [50] * 14


def test_environment_variable_finds_the_data(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDLORA_DATA", str(data_dir))
    train, _ = load_named_dataset("ag_news")
    assert len(train) == 4000


def test_partitions_of_real_data_cover_it_and_are_summarised(
    data_dir: Path, tmp_path: Path
) -> None:
    train, _ = load_named_dataset("dbpedia_14", data_dir=data_dir)
    dirichlet = get_partitioner("dirichlet", alpha=0.5, seed=0).partition(train.labels, 20)
    quality = QualityPartitioner(seed=0).split(train.labels, 20)
    for parts in (dirichlet, quality.partitions):
        counts = label_distribution(train.labels, parts, train.num_classes)
        assert counts.sum() == len(train)
        assert np.array_equal(counts.sum(axis=0), np.bincount(train.labels))
    counts = label_distribution(train.labels, quality.partitions, train.num_classes)
    high = quality.high_quality_clients
    assert len(high) == 2
    assert all(np.count_nonzero(counts[c]) == 14 for c in high)
    csv_path, _ = write_label_distribution(counts, train.label_names, tmp_path)
    assert csv_path.read_text().splitlines()[0].startswith("client,Company,")
