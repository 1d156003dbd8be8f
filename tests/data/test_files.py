"""Data files of every format read into the same rows; every bad file is one line naming where."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedlora.data import FileLayout, load_csv, read_rows
from fedlora.errors import ConfigError

ROWS = [(3, "Oil prices", "Crude rose."), (1, "Vote", "Polls open."), (3, "Stocks", "Up again.")]


def _csv(path: Path, sep: str = ",", header: str | None = None) -> Path:
    lines = [] if header is None else [header]
    lines += [sep.join([str(label), title, body]) for label, title, body in ROWS]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _parquet(path: Path, **columns: list[object]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


EXPECTED_TEXTS = ["Oil prices Crude rose.", "Vote Polls open.", "Stocks Up again."]


def test_a_headerless_csv_by_column_numbers_joins_two_text_columns(tmp_path: Path) -> None:
    layout = FileLayout(label_column=0, text_columns=(1, 2), has_header=False)
    rows = read_rows(_csv(tmp_path / "news.csv"), layout)
    assert rows.labels == [3, 1, 3]
    assert rows.texts == EXPECTED_TEXTS
    assert rows.where == ["line 1", "line 2", "line 3"]


def test_a_headerless_csv_by_configured_column_names(tmp_path: Path) -> None:
    layout = FileLayout(
        label_column="y",
        text_columns=("title", "body"),
        has_header=False,
        column_names=("y", "title", "body"),
    )
    assert read_rows(_csv(tmp_path / "news.csv"), layout).texts == EXPECTED_TEXTS


def test_tsv_by_extension_and_by_format_key(tmp_path: Path) -> None:
    layout = FileLayout(label_column="y", text_columns=("title", "body"))
    tsv = _csv(tmp_path / "news.tsv", "\t", "y\ttitle\tbody")
    assert read_rows(tsv, layout).texts == EXPECTED_TEXTS
    txt = _csv(tmp_path / "news.txt", "\t", "y\ttitle\tbody")
    with pytest.raises(ConfigError, match=r"cannot tell the format .* set data.format"):
        read_rows(txt, layout)
    assert read_rows(txt, FileLayout("y", ("title", "body"), format="tsv")).labels == [3, 1, 3]


def test_json_lines_json_array_and_parquet_give_the_same_rows(tmp_path: Path) -> None:
    records = [{"y": label, "title": title, "body": body} for label, title, body in ROWS]
    jsonl = tmp_path / "news.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    array = tmp_path / "news.json"
    array.write_text(json.dumps(records, indent=1), encoding="utf-8")
    parquet = _parquet(
        tmp_path / "news.parquet",
        y=[r[0] for r in ROWS],
        title=[r[1] for r in ROWS],
        body=[r[2] for r in ROWS],
    )
    layout = FileLayout(label_column="y", text_columns=("title", "body"))
    for path in (jsonl, array, parquet):
        rows = read_rows(path, layout)
        assert (rows.labels, rows.texts) == ([3, 1, 3], EXPECTED_TEXTS), path
    assert read_rows(array, layout).where[1] == "record 2"
    assert read_rows(parquet, FileLayout(0, (1, 2))).texts == EXPECTED_TEXTS  # by number


def test_a_header_row_that_is_data_gets_a_hint(tmp_path: Path) -> None:
    """Issue 11: the first data row was taken as the header, with no word on what to do."""
    file = _csv(tmp_path / "news.csv")
    with pytest.raises(ConfigError) as info:
        read_rows(file, FileLayout(label_column="label", text_columns=("text",)))
    message = str(info.value)
    assert message.startswith("data.label_column: ")
    assert "its first row is: 3 | Oil prices | Crude rose." in message
    assert "set data.has_header = false" in message


def test_a_non_utf8_byte_is_reported_at_its_line_and_true_offset(tmp_path: Path) -> None:
    """Issue 11: the offset was relative to a decoder buffer (7681 for 24065), with no line."""
    good = "".join(f"{i % 4},row {i} with some words to fill the buffer\n" for i in range(600))
    data = good.encode() + b"2,caf\xe9 au lait\n"
    file = tmp_path / "latin.csv"
    file.write_bytes(data)
    offset = len(good.encode()) + len(b"2,caf")
    assert offset > 3 * 8192
    with pytest.raises(ConfigError) as info:
        load_csv(file, label_column=0, text_columns=1, has_header=False)
    assert f"line 601: not UTF-8 (byte 0xe9 at byte {offset}, column 6)" in str(info.value)


def test_an_empty_text_is_an_error_naming_the_line(tmp_path: Path) -> None:
    """Issue 11: an empty text was accepted silently."""
    file = tmp_path / "d.csv"
    file.write_text('y,title,body\n1,a,b\n2,"",  \n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"d\.csv line 3: empty text in data.text_columns"):
        load_csv(file, label_column="y", text_columns=["title", "body"])
    one_empty = tmp_path / "ok.csv"
    one_empty.write_text("y,title,body\n1,a,\n", encoding="utf-8")
    assert load_csv(one_empty, label_column="y", text_columns=["title", "body"]).texts == ["a"]


def test_a_byte_order_mark_is_not_part_of_the_first_column_name(tmp_path: Path) -> None:
    file = tmp_path / "bom.csv"
    file.write_bytes(b"\xef\xbb\xbflabel,text\nx,hello\n")
    assert read_rows(file, FileLayout()).labels == ["x"]


def test_a_tab_separated_file_read_as_csv_gets_a_hint(tmp_path: Path) -> None:
    file = tmp_path / "d.csv"
    file.write_text("1\tsome text\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="a TSV file"):
        read_rows(file, FileLayout(0, (1,), has_header=False))


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"y": [1.5], "t": ["a"]}, r"row 1: bad label 1\.5"),
        ({"y": [1, None], "t": ["a", "b"]}, r"row 2: bad label None"),
        ({"y": [1, 2], "t": ["a", None]}, r"row 2: empty text"),
        ({"y": [1], "t": [3]}, r"row 1: a non-string value 3"),
        ({"y": [1], "x": ["a"]}, r"data.text_columns: .* has no column 't'; it has y, x"),
    ],
)
def test_parquet_errors_name_the_row(
    tmp_path: Path, columns: dict[str, list[object]], message: str
) -> None:
    file = _parquet(tmp_path / "bad.parquet", **columns)
    with pytest.raises(ConfigError, match=message):
        read_rows(file, FileLayout("y", ("t",)))


def test_files_that_are_not_what_they_claim(tmp_path: Path) -> None:
    fake = tmp_path / "fake.parquet"
    fake.write_text("y,t\n1,a\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not a readable Parquet file"):
        read_rows(fake, FileLayout("y", ("t",)))
    with pytest.raises(ConfigError, match="file not found"):
        read_rows(tmp_path / "none.parquet", FileLayout("y", ("t",)))
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"y": 1, "t": "a"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="JSON records have no column order"):
        read_rows(jsonl, FileLayout(0, (1,)))
    with pytest.raises(ConfigError, match="is a folder"):
        read_rows(tmp_path, FileLayout(format="csv"))
