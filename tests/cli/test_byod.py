"""Issue 11, done when: `fedlora run` on a user's own CSV, TSV, JSONL or Parquet file, by config
keys alone, names the classes everywhere; every mistake is one line and exit 2 before training.

Every test writes its own small files.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from fedlora.cli import main
from fedlora.commands import inspect as inspect_command
from fedlora.runs import RoundMetrics, RunDir

CLASSES = ["World", "Sports", "Business", "Sci/Tech"]
TOPIC_WORDS = ["vote", "goal", "shares", "chip"]


def _base(model_dir: Path) -> list[str]:
    settings = {
        "model.name": str(model_dir),
        "run.rounds": 1,
        "run.num_clients": 2,
        "run.clients_per_round": 2,
        "train.steps": 1,
        "train.batch_size": 8,
        "ranks.policy": "list",
        "ranks.options": "{ranks = [2, 4]}",
        "data.partition": "iid",
        "data.partition_options": "{}",
        "data.max_test_samples": 0,
    }
    return [f"--set={key}={value}" for key, value in settings.items()]


def _records(count: int, offset: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "id": (i + offset) % 4,
            "title": f"{TOPIC_WORDS[(i + offset) % 4]} news {i}",
            "body": f"more about {TOPIC_WORDS[(i + offset) % 4]}",
        }
        for i in range(count)
    ]


def _headerless_one_based(folder: Path) -> list[str]:
    """The classic 'label, title, description' layout: no header, labels 1..4, classes.txt."""
    for name, count in (("train.csv", 24), ("test.csv", 8)):
        rows = [[r["id"] + 1, r["title"], r["body"]] for r in _records(count)]
        with (folder / name).open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(rows)
    (folder / "classes.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    return [
        f"--set=data.dataset={folder / 'train.csv'}",
        f"--set=data.test_file={folder / 'test.csv'}",
        f"--set=data.classes_file={folder / 'classes.txt'}",
        "--set=data.has_header=false",
        "--set=data.label_column=0",
        "--set=data.text_columns=[1, 2]",
    ]


def _named(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"topic": CLASSES[r["id"]], "title": r["title"], "body": r["body"]} for r in records]


def _tsv(folder: Path) -> list[str]:
    lines = ["topic\ttitle\tbody", *("\t".join(r.values()) for r in _named(_records(30)))]
    (folder / "news.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [f"--set=data.dataset={folder / 'news.tsv'}", f"--set=data.classes={CLASSES}"]


def _jsonl(folder: Path) -> list[str]:
    for name, count in (("train", 24), ("test", 8)):
        lines = [json.dumps(r) for r in _named(_records(count))]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [f"--set=data.dataset={folder}"]  # a folder with train.* and test.*


def _parquet(folder: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(_named(_records(30))), folder / "news.parquet")
    return [f"--set=data.dataset={folder / 'news.parquet'}", f"--set=data.classes={CLASSES}"]


def _text_keys() -> list[str]:
    return ["--set=data.label_column=topic", "--set=data.text_columns=['title', 'body']"]


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["headerless_one_based", "tsv", "jsonl", "parquet"])
def test_a_users_file_runs_with_its_class_names_everywhere(
    tiny_bert_dir: Path, tmp_path: Path, layout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    if layout == "headerless_one_based":
        keys = _headerless_one_based(data)
    else:
        keys = {"tsv": _tsv, "jsonl": _jsonl, "parquet": _parquet}[layout](data) + _text_keys()
    out = tmp_path / "run"
    args = ["run", *_base(tiny_bert_dir), *keys, "--out", str(out), "--no-progress"]
    assert main(args) == 0, capsys.readouterr().err
    with (out / "label_distribution.csv").open(encoding="utf-8") as handle:
        header = next(csv.reader(handle))
    # without data.classes the names come from the training labels, sorted
    names = sorted(CLASSES) if layout == "jsonl" else CLASSES
    assert header == ["client", *names, "total"]  # four classes, named, no empty class 0
    rows = RunDir(out).metrics()
    for row in rows:
        assert [c["class"] for c in row.extra["per_class"]] == names
        assert sum(c["support"] for c in row.extra["per_class"]) == (
            6 if layout in ("tsv", "parquet") else 8  # a single file: 0.2 of 30 rows split off
        )
    summary = (out / "summary.md").read_text(encoding="utf-8")
    counts = "(6 / 2), " if layout in ("headerless_one_based", "jsonl") else ""
    assert f"- classes (train / test rows): {names[0]} {counts}" in summary
    assert f"- F1 per class (test rows), round 1: {names[0]} " in summary
    if layout == "headerless_one_based":
        assert "counted from 1" in summary


@pytest.mark.parametrize(
    ("files", "settings", "message"),
    [
        (  # the first data row is taken as the header
            {"train.csv": "3,Rapidly expanding,x\n1,b,y\n"},
            {"data.dataset": "train.csv"},
            "set data.has_header = false",
        ),
        (  # a test label training never saw
            {"train.csv": "label,text\na,x\nb,y\na,z\nb,w\n", "test.csv": "label,text\nc,v\n"},
            {"data.dataset": "train.csv", "data.test_file": "test.csv"},
            "test.csv line 2: label 'c' is not one of this run's classes (a, b)",
        ),
        (  # training lacks the highest id
            {"train.csv": "label,text\n0,x\n1,y\n0,z\n1,w\n", "test.csv": "label,text\n2,v\n"},
            {"data.dataset": "train.csv", "data.test_file": "test.csv"},
            "test.csv line 2: label 2 is not a class id of this run",
        ),
        (
            {"train.csv": b"label,text\na,x\nb,caf\xe9\n"},
            {"data.dataset": "train.csv"},
            "train.csv line 3: not UTF-8 (byte 0xe9 at byte 20, column 6)",
        ),
        (
            {"train.csv": 'label,text\na,x\nb,""\n'},
            {"data.dataset": "train.csv"},
            "train.csv line 3: empty text in data.text_columns ('text')",
        ),
        (
            {"train.csv": "label,text\n0,x\n1,y\n3,z\n"},
            {"data.dataset": "train.csv"},
            "leave id {2} without training rows",
        ),
        ({}, {"data.dataset": "news.tsv"}, "data.dataset: news.tsv: file not found"),
        (
            {"train.txt": "label\ttext\na\tx\n"},
            {"data.dataset": "train.txt"},
            "cannot tell the format from the extension '.txt'",
        ),
        (
            {},
            {"data.label_column": "true", "run.rounds": "0", "data.test_size": "1.5"},
            "run.rounds: Input should be greater than or equal to 1; data.label_column: must be",
        ),
    ],
)
def test_every_mistake_is_one_line_and_exit_2_before_training(
    tiny_bert_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    files: dict[str, str | bytes],
    settings: dict[str, str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, content in files.items():
        data = content if isinstance(content, bytes) else content.encode()
        (tmp_path / name).write_bytes(data)
    out = tmp_path / "run"
    overrides = [f"--set={key}={value}" for key, value in settings.items()]
    code = main(["run", *_base(tiny_bert_dir), *overrides, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("fedlora: error:")]
    assert code == 2, err
    assert len(lines) == 1, err
    assert message in lines[0]
    assert "Traceback" not in err
    assert not out.exists()  # nothing was trained or written


def _fake_run(path: Path, accuracy: float) -> Path:
    run = RunDir(path)
    path.mkdir(parents=True)
    for round_index in (0, 1):
        run.append_metrics(
            RoundMetrics(round_index, [], [], None, 1.0, accuracy, accuracy, 0, 0, 0.0, 0.0, 0.0)
        )
    return path


def test_plot_keys_runs_by_their_unique_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 11: two runs in same-named folders overwrote each other in the plot."""
    a = _fake_run(tmp_path / "a" / "flexlora-seed0", 0.5)
    b = _fake_run(tmp_path / "b" / "flexlora-seed0", 0.7)
    c = _fake_run(tmp_path / "b" / "other", 0.6)
    plotted: dict[str, Any] = {}

    def capture(runs: dict[str, Any], target: Path, title: str) -> Path:
        plotted.update(runs)
        return target

    monkeypatch.setattr(inspect_command, "plot_comparison", capture)
    assert main(["plot", str(a), str(b), str(c), "--out", str(tmp_path / "p.png")]) == 0
    assert list(plotted) == ["a/flexlora-seed0", "b/flexlora-seed0", "other"]
    assert plotted["b/flexlora-seed0"][0][1].test_accuracy == 0.7
    assert main(["plot", str(a), str(tmp_path / "a" / ".." / "a" / "flexlora-seed0")]) == 2
    assert "given twice" in capsys.readouterr().err
