"""Loading instruction data: Alpaca JSON/JSONL, Dolly JSONL, Natural-Instructions task files.

Local files come first; :func:`load_instruction_dataset` asks the Hugging Face hub only for known
names that are not local paths.  Every bad input becomes a one-line :class:`ConfigError` naming the
file and the line (JSONL) or record (JSON list).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fedlora.errors import ConfigError
from fedlora.instruct.examples import InstructionData, InstructionExample

PathLike = str | os.PathLike[str]

_ALPACA_FIELDS = ("instruction", "input", "output")
_DOLLY_FIELDS = ("instruction", "context", "response", "category")
_HUB_FORMATS = {
    "tatsu-lab/alpaca": "alpaca",
    "yahma/alpaca-cleaned": "alpaca",
    "vicgalle/alpaca-gpt4": "alpaca",
    "databricks/databricks-dolly-15k": "dolly",
}


def known_hub_datasets() -> list[str]:
    """The hub names :func:`load_instruction_dataset` accepts besides local paths."""
    return sorted(_HUB_FORMATS)


def load_alpaca(path: PathLike, *, task: str | None = None) -> InstructionData:
    """Alpaca records (``instruction``, optional ``input``, ``output``) from a JSON list or JSONL.

    The task of a record is its own ``task`` field when present, else ``task``, else the file stem.
    """
    file = Path(path)
    default_task = task if task is not None else file.stem
    examples = [
        _alpaca_example(record, where, default_task) for where, record in _read_records(file)
    ]
    return _non_empty(InstructionData(examples, file.stem), file)


def load_dolly(path: PathLike) -> InstructionData:
    """Dolly-15k JSONL records (``instruction``, ``context``, ``response``, ``category``).

    The task of a record is its ``category``.
    """
    file = Path(path)
    examples = [_dolly_from_fields(record, where) for where, record in _read_records(file)]
    return _non_empty(InstructionData(examples, file.stem), file)


def load_natural_instructions(path: PathLike) -> InstructionData:
    """A Natural-Instructions task file, or a folder of them (``*.json``, sorted by name).

    A task file holds ``"Definition"`` (a string or a list of strings, joined by blank lines) and
    ``"Instances"``: ``[{"input": str, "output": [str, ...]}]``; the first output is the target.
    The task name is the file stem, so each file becomes one task (one client).
    """
    root = Path(path)
    if root.is_dir():
        files = sorted(root.glob("*.json"))
        if not files:
            raise ConfigError(f"{root}: folder holds no Natural-Instructions *.json task files")
        examples = [ex for file in files for ex in _natural_task(file)]
        return InstructionData(examples, root.name)
    return InstructionData(_natural_task(root), root.stem)


def load_instruction_dataset(name_or_path: PathLike) -> InstructionData:
    """Load a local file/folder (format detected from its content) or a known hub dataset.

    Local: a folder is Natural Instructions; a ``.json`` object with ``"Instances"`` is one
    Natural-Instructions task; records with ``response``/``category`` are Dolly; anything else is
    Alpaca.  Hub names (see :func:`known_hub_datasets`) are tried only when no such path exists.
    """
    path = Path(name_or_path)
    if path.exists():
        return _load_local(path)
    name = str(name_or_path)
    if name not in _HUB_FORMATS:
        raise ConfigError(
            f"instruction dataset {name!r}: no such file or folder, and not a known hub dataset "
            f"({', '.join(known_hub_datasets())})"
        )
    try:
        rows = _hub_rows(name)
    except Exception as exc:  # any hub/network failure means "not available here"
        raise ConfigError(
            f"instruction dataset {name!r}: the Hugging Face hub failed with "
            f"{type(exc).__name__}; download it and pass the local file path instead"
        ) from exc
    records = ((f"{name} record {i}", row) for i, row in enumerate(rows))
    short = name.split("/")[-1]
    if _HUB_FORMATS[name] == "dolly":
        examples = [_dolly_from_fields(row, where) for where, row in records]
    else:
        examples = [_alpaca_example(row, where, short) for where, row in records]
    return InstructionData(examples, short)


def _hub_rows(name: str) -> list[dict[str, Any]]:
    import datasets  # heavy import, only needed for hub names

    hub: Any = datasets.load_dataset(name, split="train")
    return [dict(row) for row in hub]


def _load_local(path: Path) -> InstructionData:
    if path.is_dir():
        return load_natural_instructions(path)
    first = _first_record(path)
    if isinstance(first, Mapping) and "Instances" in first:
        return load_natural_instructions(path)
    if isinstance(first, Mapping) and ("response" in first or "category" in first):
        return load_dolly(path)
    return load_alpaca(path)


def _first_record(path: Path) -> Any:
    text = _read_text(path)
    stripped = text.lstrip()
    if stripped.startswith("{") and path.suffix == ".json":
        return _parse_json(text, path)
    for _, record in _iter_records(path, text):
        return record
    return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc


def _parse_json(text: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc


def _read_records(path: Path) -> list[tuple[str, Any]]:
    return list(_iter_records(path, _read_text(path)))


def _iter_records(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    """``(where, record)`` pairs from a JSON list (``file record i``) or JSONL (``file:line``)."""
    if text.lstrip().startswith("["):
        data = _parse_json(text, path)
        for i, record in enumerate(data):
            yield f"{path} record {i}", record
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
        yield f"{path}:{lineno}", record


def _require_strings(
    record: Any, fields: tuple[str, ...], where: str, *, optional: tuple[str, ...] = ()
) -> dict[str, str]:
    if not isinstance(record, Mapping):
        raise ConfigError(f"{where}: expected a JSON object, got {type(record).__name__}")
    out: dict[str, str] = {}
    for field in fields:
        value = record.get(field)
        if value is None and field in optional:
            value = ""
        if value is None:
            raise ConfigError(f"{where}: missing field {field!r}")
        if not isinstance(value, str):
            raise ConfigError(
                f"{where}: field {field!r} must be a string, got {type(value).__name__}"
            )
        out[field] = value
    return out


def _alpaca_example(record: Any, where: str, default_task: str) -> InstructionExample:
    fields = _require_strings(record, _ALPACA_FIELDS, where, optional=("input",))
    task = record.get("task", default_task)
    if not isinstance(task, str) or not task.strip():
        raise ConfigError(f"{where}: field 'task' must be a non-empty string")
    return InstructionExample(
        fields["instruction"], fields["input"], fields["output"], task.strip()
    )


def _dolly_from_fields(record: Any, where: str) -> InstructionExample:
    fields = _require_strings(record, _DOLLY_FIELDS, where, optional=("context",))
    if not fields["category"].strip():
        raise ConfigError(f"{where}: empty 'category'")
    return InstructionExample(
        fields["instruction"], fields["context"], fields["response"], fields["category"].strip()
    )


def _natural_task(file: Path) -> list[InstructionExample]:
    data = _parse_json(_read_text(file), file)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{file}: a Natural-Instructions task file must hold a JSON object")
    definition = data.get("Definition")
    if isinstance(definition, list) and all(isinstance(d, str) for d in definition):
        instruction = "\n\n".join(d.strip() for d in definition)
    elif isinstance(definition, str):
        instruction = definition.strip()
    else:
        raise ConfigError(f"{file}: 'Definition' must be a string or a list of strings")
    if not instruction:
        raise ConfigError(f"{file}: 'Definition' is empty")
    instances = data.get("Instances")
    if not isinstance(instances, list) or not instances:
        raise ConfigError(f"{file}: 'Instances' must be a non-empty list")
    examples = []
    for i, inst in enumerate(instances):
        where = f"{file} instance {i}"
        if not isinstance(inst, Mapping):
            raise ConfigError(f"{where}: expected a JSON object, got {type(inst).__name__}")
        text, outputs = inst.get("input"), inst.get("output")
        if not isinstance(text, str):
            raise ConfigError(f"{where}: 'input' must be a string")
        if isinstance(outputs, str):
            outputs = [outputs]
        if not isinstance(outputs, list) or not outputs or not isinstance(outputs[0], str):
            raise ConfigError(f"{where}: 'output' must be a non-empty list of strings")
        examples.append(InstructionExample(instruction, text, outputs[0], file.stem))
    return examples


def _non_empty(data: InstructionData, file: Path) -> InstructionData:
    if not data.examples:
        raise ConfigError(f"{file}: no records")
    return data
