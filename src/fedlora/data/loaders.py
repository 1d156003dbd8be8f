"""Getting text-classification data into memory: named benchmarks, CSV, JSONL and a synthetic set.

Named benchmarks come from a local copy first (offline machines and tests), then the Hugging Face
hub.  Every bad input becomes a one-line :class:`ConfigError` naming the file and line or column.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedlora.data.dataset import LabelArray, TextClassificationData
from fedlora.errors import ConfigError

DATA_ENV = "FEDLORA_DATA"
"""Environment variable naming a directory that holds local copies of the named datasets."""

_HUB_IDS = {"ag_news": "fancyzhx/ag_news", "dbpedia_14": "fancyzhx/dbpedia_14"}
_LOCAL_FILES = {"ag_news": ("train.csv", "test.csv"), "dbpedia_14": ("data.csv",)}
_INT_LABEL = re.compile(r"[+-]?\d+")

Column = int | str


def available_datasets() -> list[str]:
    """The names :func:`load_named_dataset` accepts."""
    return sorted(_HUB_IDS)


def load_named_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    test_size: int = 2000,
) -> tuple[TextClassificationData, TextClassificationData]:
    """The ``(train, test)`` splits of a named benchmark (``"ag_news"`` or ``"dbpedia_14"``).

    Looks for ``<dir>/<name>/`` in ``data_dir``, else in ``$FEDLORA_DATA``, else asks the Hugging
    Face hub.  The local DBpedia-14 subset has no test file, so ``test_size`` rows are split off it,
    stratified by class with ``seed``; sources with their own test split ignore both.
    """
    if name not in _HUB_IDS:
        raise ConfigError(
            f"unknown dataset {name!r}; valid names: {', '.join(available_datasets())}"
        )
    root, origin = _local_root(data_dir)
    if root is not None and (root / name).is_dir():
        return _load_local(name, root / name, seed=seed, test_size=test_size)
    looked = f"{root / name} ({origin})" if root is not None else f"nowhere local ({origin})"
    try:
        return _load_from_hub(name)
    except Exception as exc:  # any hub/network failure means "not available here"
        raise ConfigError(
            f"dataset {name!r}: no local copy, looked in {looked}, and the Hugging Face hub "
            f"({_HUB_IDS[name]}) failed with {type(exc).__name__}; point {DATA_ENV} or data_dir "
            f"at a directory holding {name}/"
        ) from exc


def _local_root(data_dir: str | os.PathLike[str] | None) -> tuple[Path | None, str]:
    """Where a local copy may live, and a phrase saying where that location came from."""
    if data_dir is not None:
        return Path(data_dir), "data_dir"
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env), f"from {DATA_ENV}"
    return None, f"no data_dir given and {DATA_ENV} is unset"


def _load_local(
    name: str, folder: Path, *, seed: int, test_size: int
) -> tuple[TextClassificationData, TextClassificationData]:
    """Read the README-format copy in ``folder``: header-less CSV plus ``classes.txt``."""
    for file in (*_LOCAL_FILES[name], "classes.txt"):
        if not (folder / file).is_file():
            raise ConfigError(f"dataset {name!r}: local copy {folder} has no {file}")
    label_names = _read_class_names(folder / "classes.txt")

    def read(file: str) -> TextClassificationData:
        return load_csv(
            folder / file,
            label_column=0,
            text_columns=[1],
            has_header=False,
            label_names=label_names,
            name=name,
        )

    if name == "ag_news":
        return read("train.csv"), read("test.csv")
    data = read("data.csv")
    train_idx, test_idx = stratified_split(data.labels, test_size=test_size, seed=seed)
    return data.subset(train_idx), data.subset(test_idx)


def _read_class_names(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read class names ({exc})") from exc
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise ConfigError(f"{path}: no class names")
    return names


def _load_from_hub(name: str) -> tuple[TextClassificationData, TextClassificationData]:
    """Download (or reuse the cached) hub copy and map its columns to texts and labels."""
    import datasets  # heavy import, only needed without a local copy

    hub: Any = datasets.load_dataset(_HUB_IDS[name])
    label_names = [str(n) for n in hub["train"].features["label"].names]
    return _from_hub_split(hub["train"], name, label_names), _from_hub_split(
        hub["test"], name, label_names
    )


def _from_hub_split(split: Any, name: str, label_names: list[str]) -> TextClassificationData:
    if name == "dbpedia_14":  # title and body are separate columns there
        texts = [_join([t, c]) for t, c in zip(split["title"], split["content"], strict=True)]
    else:
        texts = [str(t) for t in split["text"]]
    labels = np.asarray(list(split["label"]), dtype=np.int64)
    return TextClassificationData(texts=texts, labels=labels, label_names=label_names, name=name)


def stratified_split(
    labels: LabelArray, *, test_size: int, seed: int
) -> tuple[LabelArray, LabelArray]:
    """Sorted ``(train, test)`` index arrays with each class's share of ``test_size`` in test.

    Per-class test counts are rounded by largest remainder, so they sum exactly to ``test_size``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if not 0 < test_size < n:
        raise ConfigError(f"test_size must be in [1, {n - 1}] for {n} rows, got {test_size}")
    classes, counts = np.unique(labels, return_counts=True)
    ideal = counts * test_size / n
    take = np.floor(ideal).astype(np.int64)
    order = np.argsort(-(ideal - take), kind="stable")
    take[order[: test_size - int(take.sum())]] += 1
    rng = np.random.default_rng(seed)
    test_parts = [
        rng.permutation(np.flatnonzero(labels == c))[:k]
        for c, k in zip(classes, take.tolist(), strict=True)
    ]
    test = np.sort(np.concatenate(test_parts)).astype(np.int64)
    train = np.setdiff1d(np.arange(n, dtype=np.int64), test, assume_unique=True)
    return train, test


def load_csv(
    path: str | os.PathLike[str],
    *,
    label_column: Column,
    text_columns: Column | Sequence[Column],
    has_header: bool = True,
    delimiter: str = ",",
    label_names: Sequence[str] | None = None,
    name: str | None = None,
) -> TextClassificationData:
    """A dataset from a UTF-8 CSV file; columns by header name or 0-based index.

    Text columns are joined with a space.  Integer-looking labels are class ids (names from
    ``label_names`` or ``"0"``, ``"1"``, ...); other labels are class names, numbered in sorted
    order unless ``label_names`` fixes the order.
    """
    file = Path(path)
    wanted = [text_columns] if isinstance(text_columns, int | str) else list(text_columns)
    if not wanted:
        raise ConfigError(f"{file}: text_columns is empty")
    raw_labels: list[int | str] = []
    lines: list[int] = []
    texts: list[str] = []
    try:
        with file.open(encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle, delimiter=delimiter, strict=True)
            header: list[str] | None = next(reader, None) if has_header else None
            if has_header and header is None:
                raise ConfigError(f"{file}: empty file, expected a header row")
            label_idx = _column_index(label_column, header, file)
            text_idx = [_column_index(c, header, file) for c in wanted]
            needed = max(label_idx, *text_idx)
            end = reader.line_num
            for row in reader:
                line, end = end + 1, reader.line_num
                if not row:
                    continue
                if len(row) <= needed:
                    raise ConfigError(
                        f"{file} line {line}: {len(row)} columns, column {needed} is needed"
                    )
                value = row[label_idx].strip()
                raw_labels.append(int(value) if _INT_LABEL.fullmatch(value) else value)
                lines.append(line)
                texts.append(_join([row[i] for i in text_idx]))
    except FileNotFoundError:
        raise ConfigError(f"{file}: file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 at byte {exc.start}") from None
    except csv.Error as exc:
        raise ConfigError(f"{file} line {reader.line_num}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read ({exc.strerror})") from None
    labels, names = _encode_labels(raw_labels, lines, label_names, str(file))
    return TextClassificationData(texts, labels, names, name or file.stem)


def _column_index(column: Column, header: list[str] | None, file: Path) -> int:
    if isinstance(column, bool) or not isinstance(column, int | str):
        raise ConfigError(f"{file}: column {column!r} must be a name or a 0-based index")
    if isinstance(column, int):
        if column < 0:
            raise ConfigError(f"{file}: column index {column} is negative")
        return column
    if header is None:
        raise ConfigError(f"{file}: column {column!r} given by name but has_header=False")
    if column not in header:
        raise ConfigError(f"{file}: no column {column!r}; header has {', '.join(header)}")
    return header.index(column)


def load_jsonl(
    path: str | os.PathLike[str],
    *,
    label_key: str,
    text_keys: str | Sequence[str],
    label_names: Sequence[str] | None = None,
    name: str | None = None,
) -> TextClassificationData:
    """A dataset from a UTF-8 JSON-lines file, one object per line; blank lines are skipped.

    Text values are joined with a space.  Integer labels are class ids, string labels are class
    names (see :func:`load_csv`); the first label decides which, and the rest must match.
    """
    file = Path(path)
    keys = [text_keys] if isinstance(text_keys, str) else list(text_keys)
    if not keys:
        raise ConfigError(f"{file}: text_keys is empty")
    raw_labels: list[int | str] = []
    lines: list[int] = []
    texts: list[str] = []
    try:
        with file.open(encoding="utf-8") as handle:
            for line, content in enumerate(handle, start=1):
                if not content.strip():
                    continue
                record = _parse_json_object(content, file, line)
                if label_key not in record:
                    raise ConfigError(f"{file} line {line}: no key {label_key!r}")
                label = record[label_key]
                if isinstance(label, bool) or not isinstance(label, int | str):
                    raise ConfigError(f"{file} line {line}: bad label {label!r}")
                parts = []
                for key in keys:
                    value = record.get(key)
                    if not isinstance(value, str):
                        what = "no key" if key not in record else "a non-string value for key"
                        raise ConfigError(f"{file} line {line}: {what} {key!r}")
                    parts.append(value)
                raw_labels.append(label)
                lines.append(line)
                texts.append(_join(parts))
    except FileNotFoundError:
        raise ConfigError(f"{file}: file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 at byte {exc.start}") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read ({exc.strerror})") from None
    labels, names = _encode_labels(raw_labels, lines, label_names, str(file))
    return TextClassificationData(texts, labels, names, name or file.stem)


def _parse_json_object(content: str, file: Path, line: int) -> dict[str, Any]:
    try:
        record = json.loads(content)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{file} line {line}: invalid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise ConfigError(f"{file} line {line}: expected a JSON object")
    return record


def _encode_labels(
    raw: list[int | str], lines: list[int], label_names: Sequence[str] | None, source: str
) -> tuple[LabelArray, list[str]]:
    """Class ids and class names from raw labels that are all ids or all names."""
    if not raw:
        raise ConfigError(f"{source}: no data rows")
    if label_names is not None and len(set(label_names)) != len(label_names):
        raise ConfigError(f"{source}: label_names has duplicates")
    if isinstance(raw[0], int):
        limit = len(label_names) if label_names is not None else None
        for value, line in zip(raw, lines, strict=True):
            if not isinstance(value, int) or value < 0 or (limit is not None and value >= limit):
                expected = f"an id in [0, {limit})" if limit is not None else "an id >= 0"
                raise ConfigError(f"{source} line {line}: bad label {value!r}, expected {expected}")
        ids = [int(v) for v in raw]
        names = (
            list(label_names) if label_names is not None else [str(i) for i in range(max(ids) + 1)]
        )
        return np.asarray(ids, dtype=np.int64), names
    if label_names is None:
        for value, line in zip(raw, lines, strict=True):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{source} line {line}: bad label {value!r}, expected a name")
        names = sorted({str(v) for v in raw})
    else:
        names = list(label_names)
    lookup = {n: i for i, n in enumerate(names)}
    ids = []
    for value, line in zip(raw, lines, strict=True):
        if not isinstance(value, str) or value not in lookup:
            raise ConfigError(f"{source} line {line}: bad label {value!r}, not a class name")
        ids.append(lookup[value])
    return np.asarray(ids, dtype=np.int64), names


def _join(parts: Sequence[str]) -> str:
    return " ".join(p.strip() for p in parts if p.strip())


_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_VOCABULARY_SIZE = (len(_CONSONANTS) * len(_VOWELS)) ** 3


def _pseudo_word(index: int) -> str:
    """A distinct lowercase three-syllable word per index: plain words to any tokenizer."""
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
    # Multiplying by 104729 (coprime to 70**3) is a bijection that makes neighbours look different.
    index = (index * 104729) % _VOCABULARY_SIZE
    word = ""
    for _ in range(3):
        index, digit = divmod(index, len(syllables))
        word += syllables[digit]
    return word


def synthetic_classification(
    *,
    num_classes: int = 4,
    num_samples: int = 400,
    seed: int = 0,
    words_per_text: int = 12,
    keywords_per_class: int = 8,
    noise_words: int = 40,
    noise_fraction: float = 0.5,
) -> TextClassificationData:
    """A learnable toy dataset for unit tests: class keywords hidden among shared noise words.

    Each text holds ``round(words_per_text * (1 - noise_fraction))`` (at least one) keywords of its
    class and noise words elsewhere, in shuffled order.  Classes are balanced up to one row.
    """
    if num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
    if num_samples < num_classes:
        raise ConfigError(f"num_samples must be >= num_classes ({num_classes}), got {num_samples}")
    if words_per_text < 1 or keywords_per_class < 1 or noise_words < 1:
        raise ConfigError("words_per_text, keywords_per_class and noise_words must be >= 1")
    if not 0.0 <= noise_fraction < 1.0:
        raise ConfigError(f"noise_fraction must be in [0, 1), got {noise_fraction}")
    if num_classes * keywords_per_class + noise_words > _VOCABULARY_SIZE:
        raise ConfigError(f"synthetic vocabulary is limited to {_VOCABULARY_SIZE} words")
    rng = np.random.default_rng(seed)
    keywords = [
        [_pseudo_word(c * keywords_per_class + k) for k in range(keywords_per_class)]
        for c in range(num_classes)
    ]
    offset = num_classes * keywords_per_class
    noise = [_pseudo_word(offset + k) for k in range(noise_words)]
    labels = rng.permutation(np.arange(num_samples, dtype=np.int64) % num_classes)
    num_keywords = max(1, round(words_per_text * (1.0 - noise_fraction)))
    texts = []
    for label in labels.tolist():
        words = [keywords[label][k] for k in rng.integers(0, keywords_per_class, num_keywords)]
        words += [noise[k] for k in rng.integers(0, noise_words, words_per_text - num_keywords)]
        texts.append(" ".join(words[i] for i in rng.permutation(words_per_text)))
    return TextClassificationData(
        texts=texts,
        labels=labels,
        label_names=[f"class_{c}" for c in range(num_classes)],
        name="synthetic",
    )
