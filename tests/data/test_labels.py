"""One label vocabulary per run: how raw labels become class ids, and every way that can fail."""

from __future__ import annotations

import pytest

from fedlora.data import RawRows, Vocabulary, build_vocabulary
from fedlora.errors import ConfigError


def rows(*labels: int | str, source: str = "train.csv") -> RawRows:
    return RawRows(
        source,
        list(labels),
        [f"text {i}" for i in range(len(labels))],
        [f"line {i + 1}" for i in range(len(labels))],
    )


def test_ids_0_to_k_minus_1_name_themselves() -> None:
    vocabulary, notes = build_vocabulary(rows(2, 0, 1, 0), None, "auto")
    assert vocabulary == Vocabulary(["0", "1", "2"], 0)
    assert notes == []
    assert vocabulary.encode(rows(2, 0, 1, 0)).tolist() == [2, 0, 1, 0]


def test_ids_exactly_1_to_k_count_from_1_with_a_notice() -> None:
    """Issue 11: labels 1..K made an empty class 0 and a K+1-way head."""
    vocabulary, notes = build_vocabulary(rows(1, 2, 3, 4, 4), None, "auto")
    assert vocabulary.names == ["1", "2", "3", "4"]
    assert vocabulary.encode(rows(4, 1)).tolist() == [3, 0]
    assert len(notes) == 1 and "ids 1..4: read as counted from 1" in notes[0]


def test_ids_with_a_gap_are_an_error_not_an_empty_class() -> None:
    with pytest.raises(ConfigError, match=r"labels \{0, 1, 3\} leave id \{2\} without training"):
        build_vocabulary(rows(0, 1, 3), None, "auto")
    with pytest.raises(ConfigError, match=r"line 2: label -1 is negative"):
        build_vocabulary(rows(0, -1), None, "auto")


def test_explicit_classes_take_ids_from_0_or_exactly_from_1() -> None:
    names = ["World", "Sports", "Business", "Sci/Tech"]
    zero, notes = build_vocabulary(rows(0, 3, 1), names, "auto")
    assert (zero, notes) == (Vocabulary(names, 0), [])
    one, notes = build_vocabulary(rows(1, 4, 2), names, "auto")
    assert one == Vocabulary(names, 1) and len(notes) == 1
    assert one.encode(rows(4, 1)).tolist() == [3, 0]
    with pytest.raises(ConfigError, match=r"\{1, 2\} fit the 4 classes .* from 0 or from 1"):
        build_vocabulary(rows(1, 2), names, "auto")
    with pytest.raises(ConfigError, match=r"line 2: label 7 is not a class id: data.classes has 4"):
        build_vocabulary(rows(1, 7), names, "auto")
    assert build_vocabulary(rows(1, 2), names, "from_1")[0] == Vocabulary(names, 1)


def test_text_labels_are_names_sorted_unless_the_classes_fix_the_order() -> None:
    assert build_vocabulary(rows("b", "a"), None, "auto")[0] == Vocabulary(["a", "b"], None)
    fixed, _ = build_vocabulary(rows("b", "a"), ["b", "a", "c"], "auto")
    assert fixed.encode(rows("a", "c")).tolist() == [1, 2]
    with pytest.raises(ConfigError, match=r"line 1: label 'b' is text, but data\.label_format"):
        build_vocabulary(rows("b"), None, "from_0")


def test_names_format_makes_each_integer_a_class_in_numeric_order() -> None:
    vocabulary, _ = build_vocabulary(rows(10, 2, 5), None, "names")
    assert vocabulary.names == ["2", "5", "10"]
    assert vocabulary.encode(rows(5, 10)).tolist() == [1, 2]


def test_a_mix_of_ids_and_names_is_an_error_at_the_first_odd_row() -> None:
    with pytest.raises(ConfigError, match=r"line 3: label 'x' is text, but earlier labels are int"):
        build_vocabulary(rows(1, 2, "x"), None, "auto")


def test_a_label_outside_the_vocabulary_names_the_file_and_line() -> None:
    vocabulary, _ = build_vocabulary(rows("a", "b"), None, "auto")
    with pytest.raises(ConfigError) as info:
        vocabulary.encode(rows("a", "z", source="test.csv"), "; a hint")
    assert str(info.value) == (
        "test.csv line 2: label 'z' is not one of this run's classes (a, b); a hint"
    )
    ids, _ = build_vocabulary(rows(0, 1, 2), None, "auto")
    with pytest.raises(ConfigError, match=r"test\.csv line 1: label 3 is not a class id of"):
        ids.encode(rows(3, source="test.csv"))
