"""Getting text-classification data into memory: data files, the named presets, a synthetic set.

Every file dataset goes through one path (:func:`load_files`): read the rows of any format
(:mod:`fedlora.data.files`), decide the run's label vocabulary once from the classes or the
training rows (:mod:`fedlora.data.labels`), map the test rows through it, or split a test set off
a single file.  The named benchmarks (``ag_news``, ``dbpedia_14``) are only presets of that path:
a folder layout, a file layout and a classes file, with the Hugging Face hub as a fallback when
no local copy exists.  Every bad input becomes a one-line :class:`ConfigError` naming the file and
line or the config key.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedlora.data.dataset import LabelArray, TextClassificationData
from fedlora.data.files import (
    FORMATS,
    Column,
    FileLayout,
    RawRows,
    file_format,
    is_data_file,
    read_rows,
)
from fedlora.data.labels import LabelFormat, Vocabulary, build_vocabulary
from fedlora.errors import ConfigError

DATA_ENV = "FEDLORA_DATA"
"""Environment variable naming a directory that holds local copies of the named datasets."""

_DATA_EXTENSIONS = tuple(f".{name}" for name in FORMATS)


README_LAYOUT = FileLayout(label_column=0, text_columns=(1,), has_header=False)
"""The file layout of ``data/README.md``: no header, the label id, then the text."""


@dataclass(frozen=True)
class Preset:
    """A named dataset: where its files are in its folder and how to read them.

    The folder format of ``data/README.md``: header-less CSV, the label (a 0-based id) in column
    0, the text in column 1, class names in ``classes.txt``.  Without a test file, ``test_size``
    rows are split off the training file, stratified by class.
    """

    name: str
    hub_id: str
    hub_text_columns: tuple[str, ...]
    train_file: str
    test_file: str | None = None
    test_size: int = 2000
    layout: FileLayout = field(default_factory=lambda: README_LAYOUT)
    classes_file: str = "classes.txt"


PRESETS = {
    preset.name: preset
    for preset in (
        Preset("ag_news", "fancyzhx/ag_news", ("text",), "train.csv", "test.csv"),
        Preset("dbpedia_14", "fancyzhx/dbpedia_14", ("title", "content"), "data.csv"),
    )
}


def available_datasets() -> list[str]:
    """The names :func:`load_named_dataset` accepts."""
    return sorted(PRESETS)


def load_named_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    test_size: int | None = None,
) -> tuple[TextClassificationData, TextClassificationData]:
    """The ``(train, test)`` splits of a named benchmark (``"ag_news"`` or ``"dbpedia_14"``).

    Looks for ``<dir>/<name>/`` in ``data_dir``, else in ``$FEDLORA_DATA``, else asks the Hugging
    Face hub.  The local DBpedia-14 subset has no test file, so ``test_size`` rows (default
    2,000) are split off it, stratified by class with ``seed``; sources with their own test split
    ignore both.
    """
    if name not in PRESETS:
        raise ConfigError(
            f"unknown dataset {name!r}; valid names: {', '.join(available_datasets())}"
        )
    preset = PRESETS[name]
    root, origin = _local_root(data_dir)
    if root is not None and (root / name).is_dir():
        folder = root / name
        files = [preset.train_file, preset.classes_file]
        files += [preset.test_file] if preset.test_file else []
        for file in files:
            if not (folder / file).is_file():
                raise ConfigError(f"dataset {name!r}: local copy {folder} has no {file}")
        return load_files(
            folder / preset.train_file,
            folder / preset.test_file if preset.test_file else None,
            preset.layout,
            classes=read_class_names(folder / preset.classes_file),
            label_format="from_0",
            test_size=preset.test_size if test_size is None else test_size,
            seed=seed,
            name=name,
        )
    looked = f"{root / name} ({origin})" if root is not None else f"nowhere local ({origin})"
    try:
        return _load_from_hub(preset)
    except Exception as exc:  # any hub/network failure means "not available here"
        raise ConfigError(
            f"dataset {name!r}: no local copy, looked in {looked}, and the Hugging Face hub "
            f"({preset.hub_id}) failed with {type(exc).__name__}; point {DATA_ENV} or data_dir "
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


def read_class_names(path: str | os.PathLike[str]) -> list[str]:
    """One class name per line, in id order (blank lines skipped), e.g. a ``classes.txt``."""
    file = Path(path)
    try:
        lines = file.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise ConfigError(f"{file}: classes file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read class names ({exc})") from None
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise ConfigError(f"{file}: no class names")
    if len(set(names)) != len(names):
        raise ConfigError(f"{file}: the class names have duplicates")
    return names


def _load_from_hub(preset: Preset) -> tuple[TextClassificationData, TextClassificationData]:
    """Download (or reuse the cached) hub copy and map it through the same vocabulary path."""
    import datasets  # heavy import, only needed without a local copy

    hub: Any = datasets.load_dataset(preset.hub_id)
    vocabulary = Vocabulary([str(n) for n in hub["train"].features["label"].names], 0)

    def split(part: Any, which: str) -> TextClassificationData:
        columns = [list(part[c]) for c in preset.hub_text_columns]
        rows = RawRows(
            source=f"{preset.hub_id} {which}",
            labels=[int(label) for label in part["label"]],
            texts=[_join([str(v) for v in values]) for values in zip(*columns, strict=True)],
            where=[f"row {i + 1}" for i in range(len(part))],
        )
        return _dataset(rows, vocabulary, preset.name)

    return split(hub["train"], "train"), split(hub["test"], "test")


@dataclass(frozen=True)
class DatasetFiles:
    """The files ``data.dataset`` names: a training file, a test file, a classes file if any."""

    train: Path
    test: Path | None
    classes_file: Path | None = None


def dataset_files(dataset: str, test_file: str = "", fmt: str = "") -> DatasetFiles:
    """Where a file dataset is: a data file, or a folder with ``train.*`` and ``test.*``.

    A folder may hold ``data.*`` instead of ``train.*`` (without ``test.*``, the test rows are
    split off it) and a ``classes.txt`` (one class name per line, in id order), which is used
    unless the config names the classes.  ``test_file`` (``data.test_file``) overrides the
    folder's test file.
    """
    path = Path(dataset)
    classes_file = None
    if path.is_dir():
        extensions = {f".{fmt}"} if fmt else set(_DATA_EXTENSIONS)
        found = {
            stem: sorted(p for p in path.glob(f"{stem}.*") if p.suffix.lower() in extensions)
            for stem in ("train", "test", "data")
        }
        for stem, candidates in found.items():
            if len(candidates) > 1:
                names = " and ".join(p.name for p in candidates)
                raise ConfigError(
                    f"data.dataset: folder {path} holds {names}; keep one {stem} file"
                )
        train = found["train"] or found["data"]
        if not train:
            raise ConfigError(
                f"data.dataset: folder {path} holds no train.* or data.* file "
                f"({', '.join(sorted(extensions))})"
            )
        test = found["test"][0] if found["test"] else None
        if (path / "classes.txt").is_file():
            classes_file = path / "classes.txt"
        files = DatasetFiles(train[0], test, classes_file)
    elif path.is_file():
        file_format(path, fmt)
        files = DatasetFiles(path, None)
    elif is_data_file(path) or "/" in dataset or os.sep in dataset:
        raise ConfigError(f"data.dataset: {dataset}: file not found")
    else:
        raise ConfigError(
            f"data.dataset: unknown dataset {dataset!r}; give {', '.join(available_datasets())}, "
            f"synthetic, or the path of a .csv, .tsv, .json, .jsonl or .parquet file (or of a "
            f"folder holding train.* and test.*)"
        )
    if test_file:
        test = Path(test_file)
        if not test.is_file():
            raise ConfigError(f"data.test_file: {test_file}: file not found")
        files = DatasetFiles(files.train, test, files.classes_file)
    return files


def load_files(
    train_path: str | os.PathLike[str],
    test_path: str | os.PathLike[str] | None,
    layout: FileLayout,
    *,
    classes: Sequence[str] | None = None,
    label_format: LabelFormat = "auto",
    test_size: float = 0.2,
    seed: int = 0,
    name: str | None = None,
    test_layout: FileLayout | None = None,
) -> tuple[TextClassificationData, TextClassificationData]:
    """``(train, test)`` from a training file and a test file (or a split of the training file).

    One vocabulary for both: ``classes`` if given, else the training labels; every test label
    is mapped through it, and one outside it is an error naming the test file and line.  Without
    a test file, ``test_size`` rows (a fraction in (0, 1) or a number of rows) are split off the
    training file, stratified by class with ``seed``.
    """
    train_rows = read_rows(train_path, layout)
    vocabulary, notes = build_vocabulary(train_rows, classes, label_format)
    dataset_name = name or Path(train_path).stem
    if test_path is None:
        full = _dataset(train_rows, vocabulary, dataset_name, notes)
        count = test_size if isinstance(test_size, int) else round(test_size * len(full))
        if not 0 < count < len(full):
            raise ConfigError(
                f"data.test_size: {test_size} of {len(full)} rows of {train_path} leaves no "
                f"training or no test rows"
            )
        train_idx, test_idx = stratified_split(full.labels, test_size=count, seed=seed)
        return full.subset(train_idx), full.subset(test_idx)
    test_rows = read_rows(test_path, test_layout or layout)
    hint = (
        ""
        if classes
        else "; the classes come from the training file: list every class in data.classes "
        "(or data.classes_file) if it lacks some"
    )
    train = _dataset(train_rows, vocabulary, dataset_name, notes)
    return train, _dataset(test_rows, vocabulary, dataset_name, (), hint)


def _dataset(
    rows: RawRows,
    vocabulary: Vocabulary,
    name: str,
    notes: Sequence[str] = (),
    hint: str = "",
) -> TextClassificationData:
    labels = vocabulary.encode(rows, hint)
    return TextClassificationData(rows.texts, labels, list(vocabulary.names), name, tuple(notes))


def missing_classes_note(train: TextClassificationData) -> str | None:
    """A note (for a warning and the summary) when some class has no training rows.

    Such a class keeps its output in the model (the vocabulary is the run's), but nothing teaches
    it: that must never be silent.
    """
    empty = [n for n, c in zip(train.label_names, train.class_counts(), strict=True) if c == 0]
    if not empty:
        return None
    return (
        f"{len(empty)} of {train.num_classes} classes have no training rows: "
        f"{', '.join(empty[:8])}{', ...' if len(empty) > 8 else ''}"
    )


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


def load_file(
    path: str | os.PathLike[str],
    layout: FileLayout,
    *,
    classes: Sequence[str] | None = None,
    label_format: LabelFormat = "auto",
    name: str | None = None,
) -> TextClassificationData:
    """One labelled file on its own: its vocabulary is ``classes``, else its own labels."""
    rows = read_rows(path, layout)
    vocabulary, notes = build_vocabulary(rows, classes, label_format)
    return _dataset(rows, vocabulary, name or Path(path).stem, notes)


def load_csv(
    path: str | os.PathLike[str],
    *,
    label_column: Column,
    text_columns: Column | Sequence[Column],
    has_header: bool = True,
    delimiter: str = ",",
    label_names: Sequence[str] | None = None,
    label_format: LabelFormat = "auto",
    name: str | None = None,
) -> TextClassificationData:
    """A dataset from a UTF-8 CSV file; columns by header name or 0-based index.

    Text columns are joined with a space.  Labels are read as :func:`build_vocabulary` says:
    ``label_names`` (the classes in id order) or the file's own labels.
    """
    layout = FileLayout(
        label_column=label_column,
        text_columns=_columns(text_columns),
        format="csv",
        delimiter=delimiter,
        has_header=has_header,
    )
    return load_file(path, layout, classes=label_names, label_format=label_format, name=name)


def load_jsonl(
    path: str | os.PathLike[str],
    *,
    label_key: str,
    text_keys: str | Sequence[str],
    label_names: Sequence[str] | None = None,
    label_format: LabelFormat = "auto",
    name: str | None = None,
) -> TextClassificationData:
    """A dataset from a UTF-8 JSON-lines file, one object per line; blank lines are skipped."""
    layout = FileLayout(label_column=label_key, text_columns=_columns(text_keys), format="jsonl")
    return load_file(path, layout, classes=label_names, label_format=label_format, name=name)


def _columns(columns: Column | Sequence[Column]) -> tuple[Column, ...]:
    return (columns,) if isinstance(columns, int | str) else tuple(columns)


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
