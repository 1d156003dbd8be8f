"""Reading labelled texts from a data file: CSV, TSV, JSON, JSON lines or Parquet.

Every format is read into the same :class:`RawRows`: per row its raw label (an integer id or a
name, as written), its text (the text columns joined with a space) and where it is in the file
(``line 7``; ``record 7`` of a JSON array; ``row 7`` of a Parquet file).  Labels are turned into
class ids later, with one vocabulary for the whole run (:mod:`fedlora.data.labels`).

Text formats are read with the standard library rather than through ``datasets``/pandas: only
that way can every error name the physical line (a quoted CSV field may span lines) and the true
byte offset of a non-UTF-8 byte.  Parquet is read with pyarrow, the Arrow engine that ``datasets``
itself uses.  Every problem is a one-line :class:`ConfigError` naming the file, the line and the
config key to change.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedlora.errors import ConfigError

Column = int | str
"""A column of a data file: its name, or its 0-based number (CSV, TSV, Parquet)."""

FORMATS = ("csv", "tsv", "json", "jsonl", "parquet")
_EXTENSIONS = {f".{name}": name for name in FORMATS}
_INT_LABEL = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class FileLayout:
    """How to find labels and texts in a data file: the config's ``data.*`` file keys.

    ``format`` and ``delimiter`` empty mean "from the extension" (``.tsv``: tab, else comma);
    ``column_names`` names the columns of a file without a header row.
    """

    label_column: Column = "label"
    text_columns: tuple[Column, ...] = ("text",)
    format: str = ""
    delimiter: str = ""
    has_header: bool = True
    column_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.text_columns:
            raise ConfigError("data.text_columns: give at least one text column")
        for column in (self.label_column, *self.text_columns):
            if isinstance(column, bool) or not isinstance(column, int | str):
                raise ConfigError(f"column {column!r} must be a name or a 0-based number")
            if isinstance(column, int) and column < 0:
                raise ConfigError(f"column index {column} is negative")


@dataclass(frozen=True)
class RawRows:
    """A file's rows before their labels become class ids: all lists have one item per row."""

    source: str
    labels: list[int | str]
    texts: list[str]
    where: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def at(self, row: int) -> str:
        """``file line 7``: where row ``row`` is, for an error message."""
        return f"{self.source} {self.where[row]}"


def file_format(path: str | os.PathLike[str], given: str = "") -> str:
    """The format of ``path``: ``given`` (``data.format``), else from its extension."""
    if given:
        if given not in FORMATS:
            raise ConfigError(f"data.format: {given!r} is not one of {', '.join(FORMATS)}")
        return given
    suffix = Path(path).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise ConfigError(
            f"{path}: cannot tell the format from the extension {suffix or '(none)'!r}; name the "
            f"file .csv, .tsv, .json, .jsonl or .parquet, or set data.format"
        )
    return _EXTENSIONS[suffix]


def is_data_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` has one of the extensions :func:`read_rows` reads."""
    return Path(path).suffix.lower() in _EXTENSIONS


def read_rows(path: str | os.PathLike[str], layout: FileLayout) -> RawRows:
    """Every data row of ``path``: its raw label, its joined text and its position."""
    file = Path(path)
    fmt = file_format(file, layout.format)
    if fmt == "parquet":
        return _read_parquet(file, layout)
    text = _read_text(file)
    if fmt in ("csv", "tsv"):
        delimiter = layout.delimiter or ("\t" if fmt == "tsv" else ",")
        return _read_csv(file, text, layout, delimiter)
    for column in (layout.label_column, *layout.text_columns):
        if isinstance(column, int):
            raise ConfigError(
                f"{file}: column {column} given by number, but JSON records have no column "
                f"order; name the keys in data.label_column and data.text_columns"
            )
    if fmt == "json" and text.lstrip().startswith("["):
        return _read_json_array(file, text, layout)
    return _read_json_lines(file, text, layout)


def _read_text(file: Path) -> str:
    """The whole file as text; a non-UTF-8 byte is reported at its true line and offset."""
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{file}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{file}: is a folder, not a data file") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read ({exc.strerror})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        start = exc.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data.count(b"\n", 0, start) + 1
        column = start - (data.rfind(b"\n", 0, start) + 1) + 1
        raise ConfigError(
            f"{file} line {line}: not UTF-8 (byte 0x{data[start]:02x} at byte {start}, column "
            f"{column}); save the file as UTF-8"
        ) from None


def _raw_label(value: str) -> int | str:
    value = value.strip()
    return int(value) if _INT_LABEL.fullmatch(value) else value


def _join(parts: Sequence[str]) -> str:
    return " ".join(p.strip() for p in parts if p.strip())


def _preview(row: Sequence[str], limit: int = 4) -> str:
    cells = [c if len(c) <= 30 else c[:27] + "..." for c in row[:limit]]
    return " | ".join(cells) + (" | ..." if len(row) > limit else "")


def _columns_text(columns: Sequence[Column]) -> str:
    return ", ".join(repr(c) if isinstance(c, str) else f"#{c}" for c in columns)


class _Rows:
    """Collects rows and checks each one: a label, and a text that is not empty."""

    def __init__(self, file: Path, text_columns: Sequence[Column]) -> None:
        self.file = file
        self.text_columns = text_columns
        self.labels: list[int | str] = []
        self.texts: list[str] = []
        self.where: list[str] = []

    def add(self, label: int | str, parts: Sequence[str], where: str) -> None:
        if label == "":
            raise ConfigError(f"{self.file} {where}: empty label")
        text = _join(parts)
        if not text:
            raise ConfigError(
                f"{self.file} {where}: empty text in data.text_columns "
                f"({_columns_text(self.text_columns)})"
            )
        self.labels.append(label)
        self.texts.append(text)
        self.where.append(where)

    def done(self) -> RawRows:
        if not self.texts:
            raise ConfigError(f"{self.file}: no data rows")
        return RawRows(str(self.file), self.labels, self.texts, self.where)


def _read_csv(file: Path, text: str, layout: FileLayout, delimiter: str) -> RawRows:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows = _Rows(file, layout.text_columns)
    try:
        header: list[str] | None = None
        if layout.has_header:
            header = next(reader, None)
            if header is None:
                raise ConfigError(f"{file}: empty file, expected a header row")
            header = [name.strip() for name in header]
        names = header if header is not None else list(layout.column_names) or None
        label_idx = _csv_index(layout.label_column, "data.label_column", names, header, file)
        text_idx = [
            _csv_index(c, "data.text_columns", names, header, file) for c in layout.text_columns
        ]
        needed = max(label_idx, *text_idx)
        end = reader.line_num
        for row in reader:
            where, end = f"line {end + 1}", reader.line_num
            if not row or (len(row) == 1 and not row[0].strip() and needed > 0):
                continue
            if len(row) <= needed:
                hint = (
                    ""
                    if delimiter != "," or "\t" not in row[0]
                    else "; a TSV file? set data.format"
                )
                raise ConfigError(
                    f"{file} {where}: {len(row)} column{'s' if len(row) != 1 else ''}, but column "
                    f"{needed} (counted from 0) is needed{hint}"
                )
            rows.add(_raw_label(row[label_idx]), [row[i] for i in text_idx], where)
    except csv.Error as exc:
        raise ConfigError(f"{file} line {reader.line_num}: {exc}") from None
    return rows.done()


def _csv_index(
    column: Column, key: str, names: list[str] | None, header: list[str] | None, file: Path
) -> int:
    if isinstance(column, int):
        return column
    if names is None:
        raise ConfigError(
            f"{key}: column {column!r} given by name, but {file} has no header row "
            f"(has_header = false): give its 0-based number or set data.column_names"
        )
    if column in names:
        return names.index(column)
    if header is None:
        raise ConfigError(f"{key}: no column {column!r} in data.column_names ({', '.join(names)})")
    raise ConfigError(
        f"{key}: {file} has no column {column!r}; its first row is: {_preview(header)} -- if "
        f"that row is data, the file has no header: set data.has_header = false"
    )


def _record_parts(
    record: dict[str, Any], layout: FileLayout, file: Path, where: str
) -> tuple[int | str, list[str]]:
    key = str(layout.label_column)
    if key not in record or record[key] is None:
        raise ConfigError(f"{file} {where}: no key {key!r} (data.label_column)")
    label = record[key]
    if isinstance(label, bool) or not isinstance(label, int | str):
        raise ConfigError(
            f"{file} {where}: bad label {label!r}, expected an integer id or a class name"
        )
    if isinstance(label, str):
        label = _raw_label(label)  # "3" is the id 3, as in a CSV file
    parts = []
    for column in layout.text_columns:
        if str(column) not in record:
            raise ConfigError(f"{file} {where}: no key {column!r} (data.text_columns)")
        value = record[str(column)]
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise ConfigError(
                f"{file} {where}: a non-string value for key {column!r} (data.text_columns)"
            )
        parts.append(value)
    return label, parts


def _parse_json(content: str, file: Path, line: int) -> Any:
    try:
        return json.loads(content)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{file} line {line + exc.lineno - 1}: invalid JSON ({exc.msg})"
        ) from None


def _read_json_lines(file: Path, text: str, layout: FileLayout) -> RawRows:
    rows = _Rows(file, layout.text_columns)
    for number, content in enumerate(text.split("\n"), start=1):
        if not content.strip():
            continue
        record = _parse_json(content, file, number)
        if not isinstance(record, dict):
            raise ConfigError(f"{file} line {number}: expected a JSON object")
        label, parts = _record_parts(record, layout, file, f"line {number}")
        rows.add(label, parts, f"line {number}")
    return rows.done()


def _read_json_array(file: Path, text: str, layout: FileLayout) -> RawRows:
    records = _parse_json(text, file, 1)
    rows = _Rows(file, layout.text_columns)
    for number, record in enumerate(records, start=1):
        where = f"record {number}"
        if not isinstance(record, dict):
            raise ConfigError(f"{file} {where}: expected a JSON object")
        label, parts = _record_parts(record, layout, file, where)
        rows.add(label, parts, where)
    return rows.done()


def _read_parquet(file: Path, layout: FileLayout) -> RawRows:
    if not file.exists():
        raise ConfigError(f"{file}: file not found")
    parquet: Any = importlib.import_module("pyarrow.parquet")
    try:
        table = parquet.read_table(file)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid, OSError, ...
        raise ConfigError(f"{file}: not a readable Parquet file ({exc})") from None
    names = [str(n) for n in table.column_names]

    def values(column: Column, key: str) -> list[Any]:
        if isinstance(column, int):
            if column >= len(names):
                raise ConfigError(
                    f"{key}: column {column} (counted from 0), but {file} has {len(names)} columns"
                )
            column = names[column]
        if column not in names:
            raise ConfigError(f"{key}: {file} has no column {column!r}; it has {', '.join(names)}")
        return list(table.column(column).to_pylist())

    labels = values(layout.label_column, "data.label_column")
    texts = [values(c, "data.text_columns") for c in layout.text_columns]
    rows = _Rows(file, layout.text_columns)
    for i, label in enumerate(labels):
        where = f"row {i + 1}"
        if isinstance(label, str):
            label = _raw_label(label)
        elif label is None or isinstance(label, bool) or not isinstance(label, int):
            raise ConfigError(
                f"{file} {where}: bad label {label!r}, expected an integer id or a class name"
            )
        parts = []
        for column, column_values in zip(layout.text_columns, texts, strict=True):
            value = column_values[i]
            if value is not None and not isinstance(value, str):
                raise ConfigError(
                    f"{file} {where}: a non-string value {value!r} in text column {column!r}"
                )
            parts.append(value or "")
        rows.add(label, parts, where)
    return rows.done()
