"""Loaders: CSV/JSONL parsing and their errors, synthetic data, stratified split, named datasets."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedlora.data import (
    load_csv,
    load_jsonl,
    load_named_dataset,
    stratified_split,
    synthetic_classification,
)
from fedlora.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- CSV ----------------------------------------------------------------------------------------


def test_csv_by_column_names_joins_text_columns_and_sorts_string_labels(tmp_path: Path) -> None:
    file = write(
        tmp_path / "reviews.csv",
        'stars,title,body\npos,Great,"Loved it, really"\nneg,Bad,Broke\npos,Fine,Works\n',
    )
    data = load_csv(file, label_column="stars", text_columns=["title", "body"])
    assert data.texts == ["Great Loved it, really", "Bad Broke", "Fine Works"]
    assert data.label_names == ["neg", "pos"]
    assert data.labels.tolist() == [1, 0, 1]
    assert data.name == "reviews"


def test_csv_by_index_without_header_reads_integer_labels(tmp_path: Path) -> None:
    file = write(tmp_path / "d.tsv", "2\tthird class\n0\tfirst class\n1\tsecond\n")
    data = load_csv(file, label_column=0, text_columns=1, has_header=False, delimiter="\t")
    assert data.labels.tolist() == [2, 0, 1]
    assert data.label_names == ["0", "1", "2"]
    assert data.texts == ["third class", "first class", "second"]


def test_csv_ids_with_a_gap_are_an_error_unless_the_format_says_so(tmp_path: Path) -> None:
    file = write(tmp_path / "d.csv", "2,third class\n0,first class\n")
    with pytest.raises(ConfigError, match=r"labels \{0, 2\} leave id \{1\} without training rows"):
        load_csv(file, label_column=0, text_columns=1, has_header=False)
    data = load_csv(file, label_column=0, text_columns=1, has_header=False, label_format="from_0")
    assert data.label_names == ["0", "1", "2"]  # asked for: class 1 is kept, without rows


def test_csv_label_names_fix_the_order_of_string_labels(tmp_path: Path) -> None:
    file = write(tmp_path / "d.csv", "y,x\nlow,a\nhigh,b\n")
    data = load_csv(file, label_column="y", text_columns="x", label_names=["low", "high"])
    assert data.labels.tolist() == [0, 1]
    assert data.label_names == ["low", "high"]


def test_csv_skips_blank_lines(tmp_path: Path) -> None:
    file = write(tmp_path / "d.csv", "y,x\n\n1,a\n\n0,b\n")
    assert load_csv(file, label_column="y", text_columns="x").labels.tolist() == [1, 0]


@pytest.mark.parametrize(
    ("content", "kwargs", "message"),
    [
        ("", {}, "empty file"),
        ("y,x\n", {}, "no data rows"),
        ("y,x\n1,a\n", {"label_column": "label"}, "has no column 'label'; its first row is: y | x"),
        ("y,x\n1,a\n0\n", {}, r"line 3: 1 column, but column 1 \(counted from 0\) is needed"),
        ("y,x\n1,a\n2,b\ncat,c\n", {}, r"line 4: label 'cat' is text, but earlier labels are"),
        ("y,x\n1,a\n-1,b\n", {}, r"line 3: label -1 is negative"),
        ("y,x\n1,a\n5,b\n", {"label_names": ["p", "q"]}, r"line 3: label 5 is not a class id"),
        ("y,x\nup,a\nside,b\n", {"label_names": ["up", "down"]}, r"line 3: label 'side' is not"),
        ("y,x\nup,a\n,b\n", {}, r"line 3: empty label"),
        ("y,x\nup,a\ndown, \n", {}, r"line 3: empty text in data.text_columns \('x'\)"),
        ('y,x\n1,"a\nb"\n0,"c\n', {}, r"line 4"),
    ],
)
def test_csv_errors_name_the_file_and_line_or_column(
    tmp_path: Path, content: str, kwargs: dict[str, Any], message: str
) -> None:
    file = write(tmp_path / "bad.csv", content)
    options: dict[str, Any] = {"label_column": "y", "text_columns": "x", **kwargs}
    with pytest.raises(ConfigError, match=message) as info:
        load_csv(file, **options)
    assert str(file) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("columns", "message"), [([], "give at least one text column"), ([-1], "index -1 is negative")]
)
def test_bad_text_columns_are_refused(tmp_path: Path, columns: list[int], message: str) -> None:
    file = write(tmp_path / "d.csv", "y,x\n1,a\n")
    with pytest.raises(ConfigError, match=message):
        load_csv(file, label_column="y", text_columns=columns)


def test_csv_line_numbers_count_physical_lines_of_quoted_multiline_fields(tmp_path: Path) -> None:
    file = write(tmp_path / "d.csv", 'y,x\n1,"two\nlines"\nbad,x\n')
    with pytest.raises(ConfigError, match="line 4: label 'bad' is text"):
        load_csv(file, label_column="y", text_columns="x")


def test_csv_missing_file_name_without_header_and_non_utf8(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_csv(tmp_path / "nope.csv", label_column=0, text_columns=1)
    file = write(tmp_path / "d.csv", "1,a\n")
    with pytest.raises(ConfigError, match=r"given by name, but .* has no header row"):
        load_csv(file, label_column="y", text_columns=1, has_header=False)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("y,x\n1,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="line 2: not UTF-8"):
        load_csv(latin, label_column="y", text_columns="x")


# --- JSONL --------------------------------------------------------------------------------------


def test_jsonl_reads_keys_and_joins_texts(tmp_path: Path) -> None:
    rows = [
        {"label": "sports", "title": "Win", "body": "Team wins."},
        {"label": "world", "title": "Vote", "body": "Polls open."},
    ]
    file = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    data = load_jsonl(file, label_key="label", text_keys=["title", "body"])
    assert data.texts == ["Win Team wins.", "Vote Polls open."]
    assert data.label_names == ["sports", "world"]
    assert data.labels.tolist() == [0, 1]


def test_jsonl_integer_labels_with_names(tmp_path: Path) -> None:
    file = write(tmp_path / "d.jsonl", '{"y": 1, "t": "b"}\n{"y": 0, "t": "a"}\n')
    data = load_jsonl(file, label_key="y", text_keys="t", label_names=["A", "B"], name="mine")
    assert data.labels.tolist() == [1, 0]
    assert data.label_names == ["A", "B"]
    assert data.name == "mine"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "no data rows"),
        ('{"y": 1, "t": "a"}\n{"y": 1, "t": \n', "line 2: invalid JSON"),
        ('{"y": 1, "t": "a"}\n[1, 2]\n', "line 2: expected a JSON object"),
        ('{"y": 1, "t": "a"}\n\n{"t": "b"}\n', "line 3: no key 'y'"),
        ('{"y": 1, "t": "a"}\n{"y": 1}\n', "line 2: no key 't'"),
        ('{"y": 1, "t": "a"}\n{"y": 1, "t": 7}\n', "line 2: a non-string value for key 't'"),
        ('{"y": true, "t": "a"}\n', "line 1: bad label True"),
        ('{"y": 1.5, "t": "a"}\n', "line 1: bad label 1.5"),
        ('{"y": 1, "t": "a"}\n{"y": "x", "t": "b"}\n', "line 2: label 'x' is text"),
        ('{"y": "x", "t": "a"}\n{"y": 0, "t": "b"}\n', "line 2: label 0 is an integer id"),
        ('{"y": "x", "t": "a"}\n{"y": "z", "t": null}\n', "line 2: empty text"),
    ],
)
def test_jsonl_errors_name_the_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    file = write(tmp_path / "bad.jsonl", content)
    with pytest.raises(ConfigError, match=message) as info:
        load_jsonl(file, label_key="y", text_keys="t")
    assert str(file) in str(info.value)


def test_jsonl_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.jsonl: file not found"):
        load_jsonl(tmp_path / "nope.jsonl", label_key="y", text_keys="t")


# --- synthetic ----------------------------------------------------------------------------------


def test_synthetic_is_deterministic_per_seed_and_balanced() -> None:
    a = synthetic_classification(num_classes=3, num_samples=31, seed=5)
    b = synthetic_classification(num_classes=3, num_samples=31, seed=5)
    c = synthetic_classification(num_classes=3, num_samples=31, seed=6)
    assert a == b
    assert a != c
    assert sorted(Counter(a.labels.tolist()).values()) == [10, 10, 11]
    assert all(len(t.split()) == 12 for t in a.texts)


def test_synthetic_uses_no_global_rng() -> None:
    np_state = np.random.get_state()[1].copy()  # type: ignore[index]
    py_state = random.getstate()
    synthetic_classification(seed=3)
    assert np.array_equal(np.random.get_state()[1], np_state)  # type: ignore[index]
    assert random.getstate() == py_state


def test_synthetic_is_learnable_by_word_counts() -> None:
    """A word-count classifier fitted on half the data labels the other half well."""
    data = synthetic_classification(num_classes=5, num_samples=400, seed=1, noise_fraction=0.7)
    votes: dict[str, Counter[int]] = {}
    for text, label in zip(data.texts[:200], data.labels[:200].tolist(), strict=True):
        for word in text.split():
            votes.setdefault(word, Counter())[label] += 1
    correct = 0
    for text, label in zip(data.texts[200:], data.labels[200:].tolist(), strict=True):
        score: Counter[int] = Counter()
        for word in text.split():
            score.update(votes.get(word, Counter()))
        correct += score.most_common(1)[0][0] == label
    assert correct / 200 > 0.9


@pytest.mark.parametrize(
    "kwargs",
    [{"num_classes": 1}, {"num_samples": 2}, {"words_per_text": 0}, {"noise_fraction": 1.0}],
)
def test_synthetic_rejects_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        synthetic_classification(**kwargs)


# --- stratified split ---------------------------------------------------------------------------


@given(seed=st.integers(0, 10_000), num_classes=st.integers(1, 6), test_size=st.integers(1, 59))
def test_stratified_split_is_exact_disjoint_and_proportional(
    seed: int, num_classes: int, test_size: int
) -> None:
    labels = np.random.default_rng(seed).integers(0, num_classes, 60)
    train, test = stratified_split(labels, test_size=test_size, seed=seed)
    assert len(test) == test_size
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(60))
    for c in range(num_classes):
        share = np.sum(labels == c) * test_size / 60
        assert abs(np.sum(labels[test] == c) - share) < 1
    again = stratified_split(labels, test_size=test_size, seed=seed)
    assert np.array_equal(again[1], test)


def test_stratified_split_rejects_impossible_sizes() -> None:
    with pytest.raises(ConfigError, match="test_size"):
        stratified_split(np.zeros(10, dtype=np.int64), test_size=10, seed=0)


# --- named datasets -----------------------------------------------------------------------------


def make_local_copy(root: Path, rows_per_class: int = 5) -> Path:
    """A tiny copy in the README format: header-less CSV, 0-based labels, classes.txt."""
    (root / "ag_news").mkdir(parents=True)
    (root / "dbpedia_14").mkdir()
    (root / "ag_news" / "classes.txt").write_text("World\nSports\n")
    for split in ("train", "test"):
        lines = [f'{c},"{split} text {c}-{i}, with a comma"' for i in range(3) for c in range(2)]
        (root / "ag_news" / f"{split}.csv").write_text("\n".join(lines) + "\n")
    names = [f"Class{c}" for c in range(3)]
    (root / "dbpedia_14" / "classes.txt").write_text("\n".join(names) + "\n")
    rows = [f"{c},entity {c} {i}" for i in range(rows_per_class) for c in range(3)]
    (root / "dbpedia_14" / "data.csv").write_text("\n".join(rows) + "\n")
    return root


def test_named_dataset_reads_a_local_copy_from_data_dir(tmp_path: Path) -> None:
    root = make_local_copy(tmp_path)
    train, test = load_named_dataset("ag_news", data_dir=root)
    assert train.label_names == ["World", "Sports"]
    assert train.texts[0] == "train text 0-0, with a comma"
    assert test.texts[0].startswith("test text")
    assert len(train) == len(test) == 6


def test_named_dataset_splits_dbpedia_with_test_size_and_seed(tmp_path: Path) -> None:
    root = make_local_copy(tmp_path, rows_per_class=10)
    train, test = load_named_dataset("dbpedia_14", data_dir=root, test_size=6, seed=1)
    assert (len(train), len(test)) == (24, 6)
    assert np.bincount(test.labels).tolist() == [2, 2, 2]
    assert not set(train.texts) & set(test.texts)
    _, same = load_named_dataset("dbpedia_14", data_dir=root, test_size=6, seed=1)
    _, other = load_named_dataset("dbpedia_14", data_dir=root, test_size=6, seed=2)
    assert same.texts == test.texts
    assert other.texts != test.texts


def test_named_dataset_uses_the_environment_variable_unless_data_dir_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_root = make_local_copy(tmp_path / "env")
    arg_root = make_local_copy(tmp_path / "arg")
    (arg_root / "ag_news" / "classes.txt").write_text("A\nB\n")
    monkeypatch.setenv("FEDLORA_DATA", str(env_root))
    assert load_named_dataset("ag_news")[0].label_names == ["World", "Sports"]
    assert load_named_dataset("ag_news", data_dir=arg_root)[0].label_names == ["A", "B"]


def test_incomplete_local_copy_is_an_error(tmp_path: Path) -> None:
    root = make_local_copy(tmp_path)
    (root / "ag_news" / "test.csv").unlink()
    with pytest.raises(ConfigError, match=r"has no test\.csv"):
        load_named_dataset("ag_news", data_dir=root)


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(
        ConfigError, match="unknown dataset 'ag-news'; valid names: ag_news, dbpedia"
    ):
        load_named_dataset("ag-news")


def fake_hub(name: str) -> Any:
    """What ``datasets.load_dataset`` returns for the two hub datasets, in miniature."""
    import datasets

    if name == "fancyzhx/dbpedia_14":
        columns = {"label": [1, 0], "title": ["Acme", "Bob"], "content": [" A firm.", "A man."]}
        names = ["Company", "Person"]
    else:
        columns = {"label": [0, 1], "text": ["war news", "match result"]}
        names = ["World", "Sports"]
    features = datasets.Features(
        {
            k: datasets.ClassLabel(names=names) if k == "label" else datasets.Value("string")
            for k in columns
        }
    )
    split = datasets.Dataset.from_dict(columns, features=features)
    return datasets.DatasetDict({"train": split, "test": split})


def test_hub_fallback_maps_columns_and_joins_dbpedia_title_and_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    asked: list[str] = []

    def load_dataset(name: str) -> Any:
        asked.append(name)
        return fake_hub(name)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.delenv("FEDLORA_DATA", raising=False)
    train, _ = load_named_dataset("dbpedia_14", data_dir=tmp_path)
    assert asked == ["fancyzhx/dbpedia_14"]
    assert train.texts == ["Acme A firm.", "Bob A man."]
    assert train.labels.tolist() == [1, 0]
    assert train.label_names == ["Company", "Person"]
    train, _ = load_named_dataset("ag_news")
    assert asked[-1] == "fancyzhx/ag_news"
    assert train.texts == ["war news", "match result"]


def test_offline_without_local_copy_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    def offline(name: str) -> Any:
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConfigError) as info:
        load_named_dataset("ag_news", data_dir=tmp_path / "empty")
    message = str(info.value)
    assert str(tmp_path / "empty" / "ag_news") in message
    assert "FEDLORA_DATA" in message
    assert "ConnectionError" in message
    assert "\n" not in message
    monkeypatch.delenv("FEDLORA_DATA", raising=False)
    with pytest.raises(ConfigError, match="FEDLORA_DATA is unset"):
        load_named_dataset("dbpedia_14")
