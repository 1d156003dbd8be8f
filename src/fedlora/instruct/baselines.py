"""The model-free baseline a generation score must beat: answer by copying the input.

A metric that copying the prompt's input scores well on measures the data, not what a model
learnt (rouge-score, for one, lower-cases and drops punctuation, so the input of a case-conversion
task is its answer).  The copy is scored exactly as a model's generations are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fedlora.instruct.examples import InstructionExample
from fedlora.instruct.metrics import TaskScores, score_tasks


def copy_input(example: InstructionExample) -> str:
    """The answer of a model that echoes its input: the input field, else the instruction.

    An example without an input holds its whole request in the instruction, so that is what
    there is to copy.
    """
    return example.input if example.input.strip() else example.instruction


def copy_input_scores(
    examples: Sequence[InstructionExample], task_sizes: Mapping[str, int]
) -> TaskScores:
    """:func:`~fedlora.instruct.metrics.score_tasks` of :func:`copy_input` on every example."""
    return score_tasks(examples, [copy_input(example) for example in examples], task_sizes)
