"""One label vocabulary per run: raw labels (integer ids or names) to class ids.

The vocabulary is decided once, from ``data.classes`` (or a classes file) or else from the
training rows, and every other file of the run (the test file, a Flower node's own file) is
mapped through it, so a label means the same class everywhere and a label outside the vocabulary
is an error before any training.

``label_format`` says how raw labels name classes:

- ``"from_0"`` / ``"from_1"``: integer ids counted from 0 / 1 (``data.classes`` names them);
- ``"names"``: every distinct value is a class name, integers included (e.g. star ratings);
- ``"auto"``: text labels are names; integer ids count from 0, or from 1 when they are exactly
  ``1..K`` (``K`` classes; with ``data.classes``: ``K`` is its length), which is reported.  Ids
  with a gap are an error: an id without rows would silently add an output to the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedlora.data.dataset import LabelArray
from fedlora.data.files import RawRows
from fedlora.errors import ConfigError

LabelFormat = Literal["auto", "from_0", "from_1", "names"]
LABEL_FORMATS: tuple[LabelFormat, ...] = ("auto", "from_0", "from_1", "names")
_FORMAT_HINT = "set data.label_format to 'from_0', 'from_1' or 'names'"


@dataclass(frozen=True)
class Vocabulary:
    """The run's classes, and how an integer label finds its class.

    Text labels are looked up by name.  An integer label is the id ``label - first_id`` when
    ``first_id`` is known, else it is looked up by name too (``3`` is the class named ``"3"``).
    """

    names: list[str]
    first_id: int | None

    def __post_init__(self) -> None:
        if not self.names:
            raise ConfigError("the run has no classes")
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f"the class names have duplicates: {_short(self.names)}")

    def encode(self, rows: RawRows, hint: str = "") -> LabelArray:
        """The class id of every row; a label outside the vocabulary is a one-line error."""
        lookup = {name: i for i, name in enumerate(self.names)}
        ids = np.empty(len(rows), dtype=np.int64)
        for row, label in enumerate(rows.labels):
            if isinstance(label, int) and self.first_id is not None:
                index = label - self.first_id
                if not 0 <= index < len(self.names):
                    last = self.first_id + len(self.names) - 1
                    raise ConfigError(
                        f"{rows.at(row)}: label {label} is not a class id of this run (ids "
                        f"{self.first_id}..{last}: {_short(self.names)}){hint}"
                    )
                ids[row] = index
                continue
            found = lookup.get(str(label))
            if found is None:
                raise ConfigError(
                    f"{rows.at(row)}: label {label!r} is not one of this run's classes "
                    f"({_short(self.names)}){hint}"
                )
            ids[row] = found
        return ids


def build_vocabulary(
    rows: RawRows, classes: Sequence[str] | None, label_format: LabelFormat
) -> tuple[Vocabulary, list[str]]:
    """The vocabulary of a run whose training rows are ``rows``, and notes on how it was read.

    ``classes`` (``data.classes`` or a classes file) fixes the names and their order; without
    it the names come from the training labels.
    """
    if label_format not in LABEL_FORMATS:
        raise ConfigError(f"data.label_format: {label_format!r} is not one of {LABEL_FORMATS}")
    given = list(classes) if classes else None
    if label_format == "names":
        names = given or _sorted_names({str(label) for label in rows.labels})
        return Vocabulary(names, None), []
    kind = _one_kind(rows)
    if kind is str:
        if label_format != "auto":
            row = 0
            raise ConfigError(
                f"{rows.at(row)}: label {rows.labels[row]!r} is text, but data.label_format = "
                f"{label_format!r} expects integer ids"
            )
        return Vocabulary(given or sorted({str(label) for label in rows.labels}), None), []
    ids = [int(label) for label in rows.labels]
    if label_format in ("from_0", "from_1"):
        first = 0 if label_format == "from_0" else 1
        low = min(range(len(ids)), key=ids.__getitem__)
        if ids[low] < first:
            raise ConfigError(
                f"{rows.at(low)}: label {ids[low]} is below {first}, the first id with "
                f"data.label_format = {label_format!r}"
            )
        names = given or [str(i) for i in range(first, max(ids) + 1)]
        return Vocabulary(names, first), []
    return _auto_ids(rows, ids, given)


def _auto_ids(
    rows: RawRows, ids: list[int], given: list[str] | None
) -> tuple[Vocabulary, list[str]]:
    lowest, highest = min(ids), max(ids)
    if lowest < 0:
        row = ids.index(lowest)
        raise ConfigError(
            f"{rows.at(row)}: label {lowest} is negative; class ids count from 0 or 1"
        )
    present = sorted(set(ids))
    if given is not None:
        count = len(given)
        if highest < count and lowest == 0:
            return Vocabulary(given, 0), []
        if lowest >= 1 and highest == count:
            return Vocabulary(given, 1), [_one_based_note(rows, count, given)]
        if lowest >= 1 and highest < count:
            raise ConfigError(
                f"{rows.source}: integer labels {_span(present)} fit the {count} classes of "
                f"data.classes counted from 0 or from 1; {_FORMAT_HINT}"
            )
        row = ids.index(highest)
        raise ConfigError(
            f"{rows.at(row)}: label {highest} is not a class id: data.classes has {count} "
            f"classes (ids 0..{count - 1}, or 1..{count} with data.label_format = 'from_1')"
        )
    count = len(present)
    if present == list(range(count)):
        return Vocabulary([str(i) for i in present], 0), []
    if present == list(range(1, count + 1)):
        names = [str(i) for i in present]
        return Vocabulary(names, 1), [_one_based_note(rows, count, names)]
    first = 0 if lowest == 0 else 1
    missing = sorted(set(range(first, highest + 1)) - set(present))
    raise ConfigError(
        f"{rows.source}: integer labels {_span(present)} leave id{'s' if len(missing) > 1 else ''} "
        f"{_span(missing)} without training rows; name every class in data.classes (or "
        f"data.classes_file), or set data.label_format = 'names' to make each distinct value a "
        f"class"
    )


def _one_based_note(rows: RawRows, count: int, names: list[str]) -> str:
    return (
        f"labels of {rows.source} are the ids 1..{count}: read as counted from 1 (id 1 is "
        f"{names[0]!r}); set data.label_format = 'from_1' to say so, or 'from_0' to refuse"
    )


def _one_kind(rows: RawRows) -> type:
    """``int`` or ``str``: the kind of every label; a mix is an error at the first odd row."""
    first = type(rows.labels[0])
    for row, label in enumerate(rows.labels):
        if type(label) is not first:
            what = "text" if isinstance(label, str) else "an integer id"
            earlier = "integer ids" if first is int else "text"
            raise ConfigError(
                f"{rows.at(row)}: label {label!r} is {what}, but earlier labels are {earlier} "
                f"({rows.where[0]}: {rows.labels[0]!r}); set data.label_format = 'names' to read "
                f"every label as a class name"
            )
    return first


def _sorted_names(names: set[str]) -> list[str]:
    """Numeric order when every name is an integer (``2`` before ``10``), else text order."""
    if all(name.lstrip("+-").isdigit() for name in names):
        return sorted(names, key=int)
    return sorted(names)


def _span(values: Sequence[int]) -> str:
    """``{1, 2, 4}``, cut after a few values."""
    shown = ", ".join(str(v) for v in values[:8])
    return "{" + shown + (", ..." if len(values) > 8 else "") + "}"


def _short(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} classes)" if len(names) > limit else "")
