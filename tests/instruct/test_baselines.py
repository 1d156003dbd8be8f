"""Copying the input: what it answers, and that the generated mix does not reward it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedlora.instruct import (
    InstructionData,
    InstructionExample,
    available_task_count,
    copy_input,
    copy_input_scores,
    exact_match,
    generate_tasks,
    rouge_l,
)
from tests.instruct.test_generator import real_data_dir

MEAN_COPY_BOUND = 0.05
"""The most a copy of the input may score on average over the generated tasks.

Under each task's own metric a copy can only be right by chance: an exact-match task whose
input already is its answer (a short list that happens to be sorted), and the Rouge-L tasks
share no word with their inputs.  0.05 is one task in twenty answered by copying; the mix this
replaced scored 0.35 (1.0 on every case-conversion task).
"""
TASK_COPY_BOUND = 0.5
"""A task a copy scores this much on cannot tell answering from echoing (the issue's threshold)."""


def test_copy_input_is_the_input_or_else_the_instruction() -> None:
    assert copy_input(InstructionExample("Upper-case it.", "ab Cd", "AB CD", "t")) == "ab Cd"
    assert copy_input(InstructionExample("Say hi.", "", "hi", "t")) == "Say hi."
    assert copy_input(InstructionExample("Say hi.", "  \n", "hi", "t")) == "Say hi."


def test_copy_input_scores_are_the_inputs_scored_by_hand() -> None:
    examples = [
        InstructionExample("Upper-case it.", "ab Cd", "AB CD", "case", "exact_match"),
        InstructionExample("Upper-case it.", "EF", "EF", "case", "exact_match"),
        InstructionExample("Repeat after me: hello there.", "", "hello there", "say"),
    ]
    scores = copy_input_scores(examples, {"case": 3, "say": 1})
    said = rouge_l("Repeat after me: hello there.", "hello there")
    assert 0 < said < 1
    assert scores.by_task["case"]["score"] == pytest.approx(0.5)
    assert scores.by_task["case"]["rouge_l"] == pytest.approx(1.0)  # Rouge-L cannot see case
    assert scores.by_task["say"]["score"] == pytest.approx(said)
    assert scores.score == pytest.approx((3 * 0.5 + 1 * said) / 4)
    assert scores.exact_match == pytest.approx(3 * 0.5 / 4)


def _mix(seed: int, data_dir: Path) -> InstructionData:
    return generate_tasks(
        num_tasks=available_task_count(data_dir=data_dir),
        examples_per_task=(20, 60),
        seed=seed,
        data_dir=data_dir,
    )


@pytest.mark.parametrize("topics", [False, True], ids=["procedural", "with-topics"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_copying_the_input_scores_near_zero_on_every_generated_task(
    seed: int, topics: bool, tmp_path: Path
) -> None:
    data = _mix(seed, real_data_dir() if topics else tmp_path)
    assert len(data.tasks()) >= 100
    scores = copy_input_scores(data.examples, {t: len(i) for t, i in data.by_task().items()})
    per_task = {task: m["score"] for task, m in scores.by_task.items()}
    assert float(np.mean(list(per_task.values()))) <= MEAN_COPY_BOUND
    assert max(per_task.values()) < TASK_COPY_BOUND, max(per_task, key=per_task.__getitem__)
    # The Rouge-L of copying stays high (the input's words): the task metrics are what changed.
    assert float(np.mean([m["rouge_l"] for m in scores.by_task.values()])) > MEAN_COPY_BOUND


def test_each_copy_is_scored_by_its_tasks_metric(tmp_path: Path) -> None:
    data = _mix(0, tmp_path)
    scores = copy_input_scores(data.examples, {t: len(i) for t, i in data.by_task().items()})
    for task, rows in data.by_task().items():
        examples = [data.examples[i] for i in rows]
        metric = {"rouge_l": rouge_l, "exact_match": exact_match}[examples[0].metric]
        by_hand = np.mean([metric(ex.input, ex.output) for ex in examples])
        assert scores.by_task[task]["score"] == pytest.approx(by_hand), task
