"""The built-in task generator: determinism, heterogeneity and outputs recomputed independently."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from fedlora.errors import ConfigError
from fedlora.instruct import TASK_FAMILIES, InstructionData, available_task_count, generate_tasks
from fedlora.instruct.generator import MONTHS, WORDS

REPO_ROOT = Path(__file__).resolve().parents[2]


def _extreme(words: list[str], longest: bool) -> str:
    lengths = [len(w) for w in words]
    target = max(lengths) if longest else min(lengths)
    assert lengths.count(target) == 1, "the generator promises a unique answer"
    return words[lengths.index(target)]


def expected_output(task: str, text: str) -> str:
    """An independent oracle: the right answer from the task name and the input alone."""
    family, mode, _ = task.split(".")
    words = text.split()
    if family == "reverse":
        return " ".join(words[::-1]) if mode == "order" else " ".join(w[::-1] for w in words)
    if family == "sort":
        key = {"alpha": None, "desc": None, "length": lambda w: (len(w), w)}[mode]
        return " ".join(sorted(words, key=key, reverse=mode == "desc"))
    if family == "count":
        if mode == "items":
            return str(len(text.split(", ")))
        if mode == "words":
            return str(len(words))
        return str(sum(ch == mode[-1] for ch in text))
    if family == "extract":
        if mode in ("longest", "shortest"):
            return _extreme(words, mode == "longest")
        if mode in ("first", "last"):
            return words[0] if mode == "first" else words[-1]
        numbers = re.findall(r"\d+", text)
        return " ".join(numbers) if mode == "numbers" else str(max(map(int, numbers)))
    if family == "arithmetic":
        a, op, b = text.split()
        return str({"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op])
    if family == "format":
        if mode == "list_to_json":
            return json.dumps(text.split(", "))
        if mode == "json_to_list":
            return ", ".join(json.loads(text))
        if mode == "pairs_to_json":
            pairs = [p.split("=") for p in text.split(", ")]
            return json.dumps({k: int(v) for k, v in pairs})
        if mode == "long_to_iso":
            month, day, year = text.replace(",", "").split()
            return f"{int(year):04d}-{MONTHS.index(month) + 1:02d}-{int(day):02d}"
        y, m, d = (int(x) for x in text.split("-"))
        return f"{MONTHS[m - 1]} {d}, {y}" if mode == "iso_to_long" else f"{d:02d}/{m:02d}/{y}"
    if family == "case":
        return {"upper": text.upper(), "lower": text.lower(), "title": text.title()}[mode]
    if family == "filter":
        if mode == "dedupe":
            seen: list[str] = []
            for w in words:
                if w not in seen:
                    seen.append(w)
            return " ".join(seen)
        if mode.startswith("starts_"):
            return " ".join(w for w in words if w[0] == mode[-1])
        return " ".join(w for w in words if len(w) > int(mode.split("_")[1]))
    if family == "string":
        if mode == "acronym":
            return "".join(w[0].upper() for w in words)
        if mode in ("hyphen", "snake"):
            return ("-" if mode == "hyphen" else "_").join(words)
        if mode == "camel":
            return words[0] + "".join(w.title() for w in words[1:])
        return str(len(text.replace(" ", "")))
    raise AssertionError(f"no oracle for task {task!r}")


@pytest.fixture(scope="module")
def all_procedural() -> InstructionData:
    # Module-scoped, so the autouse function fixture that hides $FEDLORA_DATA has not run yet.
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("FEDLORA_DATA", raising=False)
        return generate_tasks(num_tasks=available_task_count(), examples_per_task=6, seed=3)


def test_word_pool_has_no_duplicates() -> None:
    assert len(set(WORDS)) == len(WORDS)


def test_at_least_100_procedural_tasks_from_9_families(all_procedural: InstructionData) -> None:
    tasks = all_procedural.tasks()
    assert len(tasks) == available_task_count() >= 100
    families = {t.split(".")[0] for t in tasks}
    assert families == set(TASK_FAMILIES) - {"topic"}
    assert len(all_procedural) == 6 * len(tasks)


def test_every_procedural_output_is_correct(all_procedural: InstructionData) -> None:
    for ex in all_procedural.examples:
        assert ex.output == expected_output(ex.task, ex.input), ex


def test_each_task_has_one_wording_and_no_two_tasks_share_it(
    all_procedural: InstructionData,
) -> None:
    wordings = {}
    for task, idx in all_procedural.by_task().items():
        instructions = {all_procedural.examples[i].instruction for i in idx}
        assert len(instructions) == 1
        wordings[task] = instructions.pop()
    assert len(set(wordings.values())) == len(wordings)


def test_tasks_vary_inside_and_outputs_are_short(all_procedural: InstructionData) -> None:
    for idx in all_procedural.by_task().values():
        inputs = [all_procedural.examples[i].input for i in idx]
        assert len(set(inputs)) > 1
    assert max(len(ex.output) for ex in all_procedural.examples) < 120


def test_deterministic_per_seed_and_prefix_stable() -> None:
    a = generate_tasks(num_tasks=30, examples_per_task=4, seed=11)
    b = generate_tasks(num_tasks=30, examples_per_task=4, seed=11)
    c = generate_tasks(num_tasks=30, examples_per_task=4, seed=12)
    assert a == b
    assert a.examples != c.examples
    longer = generate_tasks(num_tasks=40, examples_per_task=4, seed=11)
    assert longer.tasks()[:30] == a.tasks()
    assert longer.examples[: len(a)] == a.examples


def test_first_tasks_cover_every_family() -> None:
    data = generate_tasks(num_tasks=9, examples_per_task=1, seed=5)
    assert len({t.split(".")[0] for t in data.tasks()}) == 9


def test_size_range_gives_uneven_tasks_within_bounds() -> None:
    data = generate_tasks(num_tasks=40, examples_per_task=(2, 20), seed=0)
    sizes = Counter(ex.task for ex in data.examples).values()
    assert min(sizes) >= 2
    assert max(sizes) <= 20
    assert len(set(sizes)) > 3


@pytest.mark.parametrize(
    ("num_tasks", "per_task", "match"),
    [
        (0, 3, "num_tasks"),
        (10_000, 3, "num_tasks"),
        (5, 0, "examples_per_task"),
        (5, (4, 2), "examples_per_task"),
    ],
)
def test_bad_arguments(num_tasks: int, per_task: int | tuple[int, int], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        generate_tasks(num_tasks=num_tasks, examples_per_task=per_task, seed=0)


def test_topic_tasks_skipped_without_data(tmp_path: Path) -> None:
    assert available_task_count(data_dir=tmp_path) == available_task_count()


def real_data_dir() -> Path:
    path = REPO_ROOT.parent / "shared" / "data"
    if not (path / "ag_news").is_dir() or not (path / "dbpedia_14").is_dir():
        pytest.skip("the shared AG News / DBpedia data are not available")
    return path


def test_topic_labelling_uses_real_rows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root = real_data_dir()
    monkeypatch.setenv("FEDLORA_DATA", str(root))
    total = available_task_count()
    assert total == available_task_count(data_dir=tmp_path) + 8  # 2 sources x 4 wordings
    data = generate_tasks(num_tasks=total, examples_per_task=5, seed=1)
    topic = [ex for ex in data.examples if ex.task.startswith("topic.")]
    assert {ex.task for ex in topic} == {
        f"topic.{s}.{w}" for s in ("ag_news", "dbpedia_14") for w in range(4)
    }
    names = {s: (root / s / "classes.txt").read_text().split() for s in ("ag_news", "dbpedia_14")}
    rows: dict[str, dict[str, str]] = {}
    for source, file in (("ag_news", "train.csv"), ("dbpedia_14", "data.csv")):
        with (root / source / file).open(encoding="utf-8", newline="") as handle:
            rows[source] = {
                " ".join(text.split()): names[source][int(label)]
                for label, text in csv.reader(handle)
            }
    for ex in topic:
        source = ex.task.split(".")[1]
        assert rows[source][ex.input] == ex.output  # a real row with its real label
        assert all(name in ex.instruction for name in names[source])


def _rouge_tokens(text: str) -> list[str]:
    """What rouge-score compares: lower-cased runs of letters and digits."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def test_rouge_l_scores_only_answers_it_sees_whole_and_the_input_does_not_hold(
    all_procedural: InstructionData,
) -> None:
    metric_of: dict[str, str] = {}
    for ex in all_procedural.examples:
        metric_of.setdefault(ex.task, ex.metric)
        if ex.metric == "rouge_l":
            assert ex.output == " ".join(_rouge_tokens(ex.output)), ex  # Rouge-L drops nothing
            assert not set(_rouge_tokens(ex.output)) & set(_rouge_tokens(ex.input)), ex
    rouge_tasks = {t for t, m in metric_of.items() if m == "rouge_l"}
    assert {t.split(".")[0] for t in rouge_tasks} == {"count", "reverse", "string"}
    assert set(metric_of.values()) == {"rouge_l", "exact_match"}
