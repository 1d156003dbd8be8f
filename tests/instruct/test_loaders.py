"""Alpaca, Dolly and Natural-Instructions loaders on files written here, good and bad."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from fedlora.errors import ConfigError
from fedlora.instruct import (
    InstructionData,
    InstructionExample,
    load_alpaca,
    load_dolly,
    load_instruction_dataset,
    load_natural_instructions,
)

ALPACA = [
    {"instruction": "Add.", "input": "1 + 2", "output": "3"},
    {"instruction": "Say hi.", "output": "hi"},
]
DOLLY = [
    {"instruction": "Q1", "context": "ctx", "response": "A1", "category": "open_qa"},
    {"instruction": "Q2", "context": "", "response": "A2", "category": "summarization"},
    {"instruction": "Q3", "context": "c3", "response": "A3", "category": "open_qa"},
]


def write_jsonl(path: Path, records: Sequence[object]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def ni_task(path: Path, definition: object, instances: object) -> Path:
    path.write_text(json.dumps({"Definition": definition, "Instances": instances}))
    return path


def test_alpaca_json_list_and_jsonl_give_the_same_examples(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps(ALPACA))
    write_jsonl(tmp_path / "a.jsonl", list(ALPACA))
    from_json = load_alpaca(tmp_path / "a.json")
    from_jsonl = load_alpaca(tmp_path / "a.jsonl")
    expected = [
        InstructionExample("Add.", "1 + 2", "3", "a"),
        InstructionExample("Say hi.", "", "hi", "a"),
    ]
    assert from_json.examples == expected
    assert from_jsonl.examples == expected
    assert load_alpaca(tmp_path / "a.json", task="math").tasks() == ["math"]


def test_alpaca_record_task_field_wins(tmp_path: Path) -> None:
    records = [dict(ALPACA[0], task="t1"), dict(ALPACA[1], task="t2")]
    data = load_alpaca(write_jsonl(tmp_path / "x.jsonl", records))
    assert data.tasks() == ["t1", "t2"]


@pytest.mark.parametrize(
    ("content", "where", "what"),
    [
        (
            '{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": 3}\n',
            ":2:",
            "output",
        ),
        (
            '{"instruction": "a", "output": "b"}\n\n{"input": "x", "output": "b"}\n',
            ":3:",
            "instruction",
        ),
        ('{"instruction": "a", "output": "b"}\nnot json\n', ":2:", "invalid JSON"),
        ('[{"instruction": "a", "output": "b"}, 5]', "record 1", "JSON object"),
        ("", "bad.jsonl", "no records"),
    ],
)
def test_alpaca_bad_files_name_file_and_line(
    tmp_path: Path, content: str, where: str, what: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ConfigError, match=what) as info:
        load_alpaca(path)
    assert str(path) in str(info.value)
    assert where in str(info.value)
    assert "\n" not in str(info.value)


def test_dolly_task_is_category_and_context_is_input(tmp_path: Path) -> None:
    data = load_dolly(write_jsonl(tmp_path / "dolly.jsonl", list(DOLLY)))
    assert data.tasks() == ["open_qa", "summarization"]
    assert data.examples[0] == InstructionExample("Q1", "ctx", "A1", "open_qa")
    assert data.by_task()["open_qa"].tolist() == [0, 2]


def test_dolly_missing_category_names_line(tmp_path: Path) -> None:
    bad = [DOLLY[0], {"instruction": "Q", "context": "", "response": "A"}]
    path = write_jsonl(tmp_path / "dolly.jsonl", bad)
    with pytest.raises(ConfigError, match=r"dolly\.jsonl:2: missing field 'category'"):
        load_dolly(path)


def test_natural_instructions_file_and_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ni"
    folder.mkdir()
    ni_task(
        folder / "task001_add.json",
        ["Add the numbers.", "Answer with digits."],
        [{"input": "1 2", "output": ["3", "three"]}, {"input": "2 2", "output": ["4"]}],
    )
    ni_task(folder / "task002_echo.json", "Repeat.", [{"input": "x", "output": ["x"]}])
    one = load_natural_instructions(folder / "task001_add.json")
    assert one.examples[0] == InstructionExample(
        "Add the numbers.\n\nAnswer with digits.", "1 2", "3", "task001_add"
    )
    both = load_natural_instructions(folder)
    assert both.tasks() == ["task001_add", "task002_echo"]
    assert len(both) == 3
    assert load_instruction_dataset(folder).examples == both.examples


@pytest.mark.parametrize(
    ("definition", "instances", "what"),
    [
        (7, [{"input": "a", "output": ["b"]}], "Definition"),
        ("Do.", [], "Instances"),
        ("Do.", [{"input": "a", "output": []}], "instance 0: 'output'"),
        ("Do.", [{"input": "a", "output": ["b"]}, {"output": ["b"]}], "instance 1: 'input'"),
    ],
)
def test_natural_instructions_bad_files(
    tmp_path: Path, definition: object, instances: object, what: str
) -> None:
    path = ni_task(tmp_path / "task9.json", definition, instances)
    with pytest.raises(ConfigError, match=what) as info:
        load_natural_instructions(path)
    assert str(path) in str(info.value)


def test_empty_natural_instructions_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no Natural-Instructions"):
        load_natural_instructions(tmp_path)


def test_load_instruction_dataset_detects_local_formats(tmp_path: Path) -> None:
    dolly = load_instruction_dataset(write_jsonl(tmp_path / "d.jsonl", list(DOLLY)))
    assert dolly.tasks() == ["open_qa", "summarization"]
    (tmp_path / "a.json").write_text(json.dumps(ALPACA))
    assert load_instruction_dataset(tmp_path / "a.json").examples[1].output == "hi"
    ni = ni_task(tmp_path / "t5.json", "Do.", [{"input": "a", "output": ["b"]}])
    assert load_instruction_dataset(ni).tasks() == ["t5"]


def test_unknown_name_and_offline_hub_are_one_line_config_errors() -> None:
    with pytest.raises(ConfigError, match="not a known hub dataset"):
        load_instruction_dataset("no/such-dataset-here")
    # tests run with HF_DATASETS_OFFLINE=1 and nothing cached: the hub must fail cleanly
    with pytest.raises(ConfigError, match=r"databricks-dolly-15k.*hub failed") as info:
        load_instruction_dataset("databricks/databricks-dolly-15k")
    assert "\n" not in str(info.value)


def test_instruction_data_subset_and_validation() -> None:
    examples = [InstructionExample("i", str(k), str(k), f"t{k % 2}") for k in range(5)]
    data = InstructionData(examples, "d")
    assert data.subset(np.array([4, 0])).examples == [examples[4], examples[0]]
    assert data.by_task()["t1"].tolist() == [1, 3]
    with pytest.raises(ConfigError, match="out of range"):
        data.subset([5])
    with pytest.raises(ConfigError, match="empty task"):
        InstructionData([InstructionExample("i", "", "o", "")], "d")


def test_loaded_tasks_are_scored_by_rouge_l_and_a_task_has_one_metric(tmp_path: Path) -> None:
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([{"instruction": "i", "input": "", "output": "o"}]))
    assert [ex.metric for ex in load_instruction_dataset(str(path)).examples] == ["rouge_l"]
    with pytest.raises(ConfigError, match="example 0 has metric 'bleu'"):
        InstructionData([InstructionExample("i", "", "o", "t", "bleu")], "d")
    mixed = [InstructionExample("i", "", "o", "t", m) for m in ("exact_match", "rouge_l")]
    with pytest.raises(ConfigError, match="task 't' is scored by both 'exact_match' and 'rouge_l'"):
        InstructionData(mixed, "d")
